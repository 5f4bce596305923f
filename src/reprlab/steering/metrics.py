"""Dose–response measurements under steering: readout shift, answer shift and side effects.

Each function sweeps coefficients and returns, per coefficient, one number per example so
that :func:`mean_ci` can put a 95% interval over examples on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reprlab import _threads
from reprlab.errors import DataError, ModelError
from reprlab.steering.fit import _pad, _tokenize, collect
from reprlab.steering.operators import steer

if TYPE_CHECKING:
    from reprlab.models import LoadedModel
    from reprlab.steering.readout import Readout

logger = logging.getLogger(__name__)

#: short, topic-neutral sentences for side-effect measurements (written for reprlab)
NEUTRAL_TEXTS = [
    "The train leaves the station at half past nine every morning.",
    "Water boils at a lower temperature high up in the mountains.",
    "She put the books back on the shelf after reading them.",
    "The museum is closed on Mondays and open late on Fridays.",
    "A square has four sides of equal length.",
    "He bought bread, milk and a few apples at the market.",
    "The river flows through the valley towards the sea.",
    "Most plants need sunlight, water and air to grow.",
    "The meeting was moved to the small room on the second floor.",
    "Copper is a good conductor of heat and electricity.",
    "They walked along the beach until the sun went down.",
    "The recipe calls for two eggs and a cup of flour.",
    "The library lends books, films and music for three weeks.",
    "A week has seven days and a year has twelve months.",
    "The bus was late because of the heavy snow.",
    "Bees carry pollen from one flower to the next.",
]


def mean_ci(x: torch.Tensor, level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x [n]`` with a percentile-bootstrap interval -> ``(mean, lo, hi)``."""
    x = x.double().reshape(-1)
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.numel() == 1:
        return mean, mean, mean
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    boots = x[idx].mean(1)
    a = (1 - level) / 2
    lo, hi = torch.quantile(boots, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return mean, float(lo), float(hi)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two sequences (no ties correction needed for a sweep)."""
    xt, yt = torch.tensor(list(x), dtype=torch.float64), torch.tensor(list(y), dtype=torch.float64)
    if xt.numel() < 2 or not (torch.isfinite(xt).all() and torch.isfinite(yt).all()):
        return float("nan")  # ranks of NaN are meaningless (argsort would make them 1.00)
    rx = xt.argsort().argsort().double()
    ry = yt.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.norm() * ry.norm())
    return float((rx @ ry) / den) if den > 0 else float("nan")


def finite(values: torch.Tensor, metric: str, coeff: float) -> torch.Tensor:
    """``values`` when every one is finite; :class:`DataError` naming metric and coefficient."""
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise DataError(f"{metric} is NaN or infinite for {bad} of {values.numel()} examples at "
                        f"coefficient {coeff:g}; check the direction (a probe or vector with "
                        "non-finite weights) or use smaller coefficients")
    return values


def _steer_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw[k] for k in ("op", "unit", "scope", "preserve_norm") if k in kw}


def readout_shift(lm: LoadedModel, vector: Any, site: str, readout: Readout,
                  texts: Sequence[str], coeffs: Sequence[float], batch_size: int = 32,
                  progress: bool = True, threads: int | None = None,
                  **steer_kw: Any) -> dict[float, torch.Tensor]:
    """Probe scores at ``readout.site`` while steering at ``site``: ``{coeff: [n]}``.

    Works for encoders and causal LMs; the readout is pooled at ``readout.position``.
    """
    if not torch.isfinite(readout.unit).all():
        raise DataError(f"the readout probe at {readout.site} has NaN or infinite weights; "
                        "train it again")
    out = {}
    for c in tqdm(list(coeffs), desc="readout shift", disable=not progress):
        with steer(lm, vector, c, sites=[site], check=False, **_steer_kwargs(steer_kw)):
            pooled = collect(lm, list(texts), [readout.site], readout.position, batch_size,
                             progress=False, threads=threads)[readout.site]
        out[float(c)] = finite(readout.score(pooled), "readout shift", float(c))
    return out


def _shared_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k


def answer_items(lm: LoadedModel, positive: Sequence[str], negative: Sequence[str]
                 ) -> list[tuple[list[int], list[int], int]]:
    """Token ids of each pair and their shared-prefix length ``k`` (the prompt).

    Pairs whose texts share no prefix, or where one text is a prefix of the other, are left
    out; an empty result raises :class:`DataError`.
    """
    pos, neg = _tokenize(lm, positive), _tokenize(lm, negative)
    items = []
    for a, b in zip(pos, neg, strict=True):
        k = _shared_prefix(a, b)
        if 0 < k < min(len(a), len(b)):
            items.append((a, b, k))
    if not items:
        raise DataError("no contrast pair shares a prompt with distinct continuations; answer "
                        "metrics need pairs like 'Q ... (A' vs 'Q ... (B'")
    if len(items) < len(pos):
        logger.info("answer metrics use %d of %d pairs (the rest share no prompt)", len(items),
                    len(pos))
    return items


def _continuation_logprob(lm: LoadedModel, seqs: list[list[int]], starts: list[int],
                          batch_size: int, threads: int | None = None) -> torch.Tensor:
    """Sum of log p(token) over ``seq[start:]`` for each sequence -> ``[n]``."""
    out = torch.empty(len(seqs), dtype=torch.float64)
    old = getattr(lm.tokenizer, "padding_side", "right")
    lm.tokenizer.padding_side = "right"
    try:
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            batch = _pad(lm, chunk)
            with _threads.for_forward(lm, batch["attention_mask"].numel(), threads), \
                    torch.no_grad():
                logits = lm.model(**batch).logits.double()
            logp = F.log_softmax(logits[:, :-1], -1)
            tgt = batch["input_ids"][:, 1:]
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            for j, (seq, s) in enumerate(zip(chunk, starts[i:i + batch_size], strict=True)):
                out[i + j] = tok_lp[j, s - 1:len(seq) - 1].sum().cpu()
    finally:
        lm.tokenizer.padding_side = old
    return out


def answer_shift(lm: LoadedModel, vector: Any, site: str, positive: Sequence[str],
                 negative: Sequence[str], coeffs: Sequence[float], batch_size: int = 16,
                 progress: bool = True, threads: int | None = None,
                 **steer_kw: Any) -> dict[float, torch.Tensor]:
    """Log-probability difference of the positive vs negative continuation: ``{coeff: [n]}``.

    The prompt is the shared token prefix of each pair (CAA's A/B answers: the question with
    ``(A`` or ``(B``). ``sigmoid`` of the difference is the probability of the positive answer
    among the two.
    """
    if not lm.is_causal:
        raise ModelError(f"{lm.name} is not a causal LM; answer probabilities need one")
    items = answer_items(lm, positive, negative)
    seqs = [a for a, _, _ in items] + [b for _, b, _ in items]
    starts = [k for _, _, k in items] * 2
    n = len(items)
    out = {}
    for c in tqdm(list(coeffs), desc="answer shift", disable=not progress):
        with steer(lm, vector, c, sites=[site], check=False, **_steer_kwargs(steer_kw)):
            lp = _continuation_logprob(lm, seqs, starts, batch_size, threads)
        out[float(c)] = finite(lp[:n] - lp[n:], "answer shift", float(c))
    return out


def answer_accuracy(lm: LoadedModel, vector: Any, site: str, prompts: Sequence[str],
                    answers: Sequence[str], coeffs: Sequence[float], *, chat: bool = False,
                    batch_size: int = 16, progress: bool = True,
                    **steer_kw: Any) -> dict[float, torch.Tensor]:
    """Is the greedy answer the known one, steered at each coefficient: ``{coeff: [n]}``
    (1.0 / 0.0 per prompt; :mod:`reprlab.answers`)."""
    from reprlab.answers import correct, encode

    rows = encode(lm, prompts, answers, chat)
    out = {}
    for c in tqdm(list(coeffs), desc="answer accuracy", disable=not progress):
        with steer(lm, vector, c, sites=[site], check=False, **_steer_kwargs(steer_kw)):
            out[float(c)] = correct(lm, rows, batch_size).double()
    return out


def _token_nll_and_last(lm: LoadedModel, rows: list[list[int]], batch_size: int,
                        threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token NLL per text ``[n]`` and last-token log-probs ``[n, V]``."""
    nll = torch.empty(len(rows), dtype=torch.float64)
    last = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        batch = _pad(lm, chunk)
        with _threads.for_forward(lm, batch["attention_mask"].numel(), threads), \
                torch.no_grad():
            logits = lm.model(**batch).logits.double()
        mask = batch["attention_mask"]
        logp = F.log_softmax(logits, -1)
        tgt = batch["input_ids"][:, 1:]
        tok = -logp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        m = (mask[:, 1:] * mask[:, :-1]).double()
        nll[i:i + len(chunk)] = ((tok * m).sum(1) / m.sum(1).clamp_min(1)).cpu()
        idx = mask.long().sum(1) - 1 if lm.tokenizer.padding_side != "left" else \
            torch.full((len(chunk),), mask.shape[1] - 1, device=mask.device)
        last.append(logp[torch.arange(len(chunk)), idx].cpu())
    return nll, torch.cat(last)


def side_effects(lm: LoadedModel, vector: Any, site: str, texts: Sequence[str],
                 coeffs: Sequence[float], batch_size: int = 16, progress: bool = True,
                 threads: int | None = None,
                 **steer_kw: Any) -> dict[str, dict[float, torch.Tensor]]:
    """Damage done elsewhere, per text and coefficient.

    Causal LMs: ``delta_loss`` (mean token NLL steered minus unsteered; exp of it is the
    perplexity ratio) and ``kl_next`` (KL(unsteered || steered) of the next-token distribution
    after each text). Encoders: ``final_drift`` (1 - cosine between the steered and unsteered
    mean-pooled last-block outputs).
    """
    texts = list(texts)
    if not texts:
        raise DataError("no neutral texts for side effects")
    if lm.is_causal:
        rows = [r for r in _tokenize(lm, texts) if len(r) >= 2]
        if not rows:
            raise DataError("neutral texts need at least two tokens each")
        base_nll, base_last = _token_nll_and_last(lm, rows, batch_size, threads)
        dl, kl = {}, {}
        for c in tqdm(list(coeffs), desc="side effects", disable=not progress):
            with steer(lm, vector, c, sites=[site], check=False, **_steer_kwargs(steer_kw)):
                nll, lastp = _token_nll_and_last(lm, rows, batch_size, threads)
            dl[float(c)] = finite(nll - base_nll, "delta_loss", float(c))
            kl[float(c)] = finite((base_last.exp() * (base_last - lastp)).sum(-1), "kl_next",
                                  float(c))
        return {"delta_loss": dl, "kl_next": kl}
    last_site = f"layers.{lm.arch.n_layers - 1}"
    base = collect(lm, texts, [last_site], "mean", batch_size, progress=False,
                   threads=threads)[last_site]
    drift = {}
    for c in tqdm(list(coeffs), desc="side effects", disable=not progress):
        with steer(lm, vector, c, sites=[site], check=False, **_steer_kwargs(steer_kw)):
            now = collect(lm, texts, [last_site], "mean", batch_size, progress=False,
                          threads=threads)[last_site]
        drift[float(c)] = finite(1 - F.cosine_similarity(now.double(), base.double(), dim=-1),
                                 "final_drift", float(c))
    return {"final_drift": drift}


__all__ = ["NEUTRAL_TEXTS", "answer_items", "answer_shift", "mean_ci", "readout_shift",
           "side_effects", "spearman"]
