"""The surface baseline: what the words alone predict, on the probe's own rows.

A probe's accuracy says how much of the label a layer holds, not how much of it the model
*computed*: where a dataset's words give the label away (a country that is mostly named in
true statements), a probe on any layer, even the embeddings, reads it. The baseline here is
a bag-of-words logistic regression (lower-cased words, present or absent) fitted on the
same train / validation / test rows as the probes, its L2 strength chosen on the validation
rows only. A probe's accuracy above it is what the layer holds beyond the words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from reprlab.probes import metrics as M
from reprlab.probes.fitters import L2_GRID, select_setting
from reprlab.probes.logistic import fit_logistic, linear_logits, probs_from_logits

#: a word: a run of letters or digits ("fifty-one" is two words, "Paris." one)
WORD = re.compile(r"[^\W_]+")

#: at most this many words become features (the most frequent), and no more than
#: ``MAX_CELLS`` feature cells in all (rows x words), to keep the dense matrix small
MAX_WORDS = 4096
MAX_CELLS = 50_000_000
MIN_WORDS = 256


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return WORD.findall(text.lower())


def vocabulary(texts: Sequence[str], max_words: int = MAX_WORDS) -> list[str]:
    """The ``max_words`` words that occur in most of ``texts`` (ties: alphabetical)."""
    df = Counter(w for t in texts for w in set(words(t)))
    return [w for w, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]]


def bag_of_words(texts: Sequence[str], vocab: Sequence[str]) -> torch.Tensor:
    """``[N, V]`` float32: 1 where row ``i`` holds word ``vocab[j]``, else 0."""
    index = {w: j for j, w in enumerate(vocab)}
    X = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        cols = [index[w] for w in set(words(t)) if w in index]
        if cols:
            X[i, cols] = 1.0
    return X


def surface_baseline(texts: Sequence[str], labels: torch.Tensor,
                     runs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *,
                     n_classes: int, l2_grid: Sequence[float] = L2_GRID,
                     bootstrap: int = 1000, seed: int = 0, max_iter: int = 500,
                     tol: float = 1e-4) -> dict[str, Any]:
    """Fit and score the bag-of-words baseline on the probe sweep's ``runs``.

    ``texts [N]`` and ``labels [N]`` hold every row (training, validation and test);
    ``runs`` the sweep's ``(train, val, test)`` row indices: one run for a split, ``k`` for
    cross-validation (test predictions pooled out of fold, as the probes'). Per run the L2
    strength with the best validation accuracy (ties: log-loss) is kept. Returns
    ``test_acc`` with its 95% bootstrap interval (``test_acc_lo``/``_hi``), ``val_acc``,
    ``train_acc`` (first run), ``l2`` per run, ``features`` (the vocabulary size, from the
    training and validation rows) and ``probs`` ``[m, K]`` on the pooled test rows.
    """
    y = torch.as_tensor(labels).long()
    seen = torch.unique(torch.cat([torch.cat([tr, va]) for tr, va, _ in runs]))
    cap = max(MIN_WORDS, min(MAX_WORDS, MAX_CELLS // max(len(texts), 1)))
    vocab = vocabulary([texts[i] for i in seen.tolist()], cap)
    X = bag_of_words(texts, vocab)
    values = [float(v) for v in l2_grid]
    grid = torch.tensor(values)
    H = len(grid)
    probs_te, probs_va, y_va, chosen = [], [], [], []
    train_acc = None
    for tr, va, te in runs:
        fit = fit_logistic(X[tr][None], y[tr][None].expand(H, -1), n_classes=n_classes,
                           l2=grid, max_iter=max_iter, tol=tol)  # [1, H, K', V]
        h = int(select_setting(linear_logits(X[va][None], fit.weight, fit.bias), y[va])[0])
        w, b = fit.weight[:, h:h + 1], fit.bias[:, h:h + 1]

        def prob(rows: torch.Tensor, w: torch.Tensor = w, b: torch.Tensor = b) -> torch.Tensor:
            return probs_from_logits(linear_logits(X[rows][None], w, b))[0, 0]  # [m, K]

        probs_te.append(prob(te))
        probs_va.append(prob(va))
        y_va.append(y[va])
        chosen.append(values[h])
        if train_acc is None:
            train_acc = float(M.accuracy(prob(tr), y[tr]))
    te_all = torch.cat([te for _, _, te in runs])
    pt = torch.cat(probs_te)
    s = M.score(pt[None], y[te_all], resamples=bootstrap, seed=seed)
    acc = s["accuracy"]
    lo, hi = float(acc["lo"][0]), float(acc["hi"][0])
    return {"model": "bag of words (lower-cased words present/absent), logistic",
            "test_acc": float(acc["value"][0]),
            "test_acc_lo": None if lo != lo else lo, "test_acc_hi": None if hi != hi else hi,
            "val_acc": float(M.accuracy(torch.cat(probs_va), torch.cat(y_va))),
            "train_acc": train_acc, "l2": chosen, "features": len(vocab),
            "n_test": len(te_all), "probs": pt}
