"""Fit steering vectors: one batched forward records every requested site at once.

The collector tokenises all texts once, sorts them by length so that each batch carries little
padding, pools each site's hidden states at the requested position inside the hook (so only
``[B, d]`` per site is kept), and ends the forward right after the deepest requested site (the
language-model head is never run). Positive and negative texts share batches. Each batch's
forward runs at :func:`reprlab._threads.for_forward`'s thread count (or ``threads=``), and the
caller's torch thread count is restored afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from reprlab import _threads
from reprlab.errors import ConfigError, DataError
from reprlab.hooks import record, run_until_stop
from reprlab.positions import parse_position, pool
from reprlab.sites import resolve_sites
from reprlab.steering.directions import PAIRED, canonical_method, estimate
from reprlab.steering.vector import SteeringVector

if TYPE_CHECKING:
    from reprlab.models import LoadedModel

logger = logging.getLogger(__name__)


def _tokenize(lm: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    enc = lm.tokenizer(list(texts), truncation=True, max_length=lm.max_length,
                       padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def _pad(lm: LoadedModel, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    left = getattr(lm.tokenizer, "padding_side", "right") == "left"
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if lm.arch.model_type == "bert":
        batch["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(lm.device) for k, v in batch.items()}


@torch.inference_mode()
def collect(lm: LoadedModel, texts: Sequence[str], sites: Any = "layers.*",
            position: str = "last", batch_size: int = 32, progress: bool = True,
            dtype: torch.dtype = torch.float32, threads: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Pooled activations of ``texts`` at every site in one forward per batch.

    Returns ``{site name: [n_texts, d]}`` on CPU in ``dtype``, rows in the order of ``texts``.
    ``threads``: torch threads for the forwards (None: reprlab's policy per batch).
    """
    if not texts:
        raise DataError("no texts to read activations from")
    pos = parse_position(position)
    if pos in ("all", "mean:span"):
        raise ConfigError(f"position {pos!r} does not give one vector per text; use last, "
                          "first, middle, mean, mean:content or a token index")
    resolved = resolve_sites(lm, sites)
    rows = _tokenize(lm, texts)
    if any(len(r) == 0 for r in rows):
        bad = next(i for i, r in enumerate(rows) if not r)
        raise DataError(f"text {bad} tokenises to nothing; drop it or fill it in")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = {s.name: torch.empty(len(rows), lm.arch.hidden_size, dtype=dtype) for s in resolved}
    state: dict[str, torch.Tensor] = {}
    special = set(getattr(lm.tokenizer, "all_special_ids", []) or [])

    def reduce(_name: str, h: torch.Tensor) -> torch.Tensor:
        return pool(h, state["mask"], pos, state.get("content"))

    stop = all(s.layer is not None for s in resolved)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="reading activations", disable=not progress,
                      total=len(starts)):
        idx = order[start:start + batch_size]
        batch = _pad(lm, [rows[i] for i in idx])
        state["mask"] = batch["attention_mask"]
        if pos == "mean:content":
            ids = batch["input_ids"]
            content = batch["attention_mask"].clone()
            for sid in special:
                content = content * (ids != sid)
            state["content"] = content
        with _threads.for_forward(lm, batch["attention_mask"].numel(), threads), \
                record(lm, resolved, detach=True, transform=reduce, stop=stop) as cache:
            run_until_stop(lambda b=batch: lm.model(**b))
        rows_t = torch.tensor(idx)
        for name, v in cache.items():
            out[name][rows_t] = v.to("cpu", dtype)
    return out


@dataclass
class SteeringFitter:
    """Fits a :class:`SteeringVector` from contrast pairs or labeled rows.

    ``method`` is a key of :data:`reprlab.steering.directions.METHODS`; ``position`` where each
    text is read (default the last non-padding token, as repeng and steering-vectors read).
    ``threads``: torch threads for the forwards (None: reprlab's policy, see :func:`collect`).
    """

    lm: LoadedModel
    sites: Any = "layers.*"
    method: str = "mean-diff"
    position: str = "last"
    batch_size: int = 32
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        self.position = parse_position(self.position)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def fit_pairs(self, positive: Sequence[str], negative: Sequence[str],
                  source: str = "") -> SteeringVector:
        """Fit from matched positive/negative texts (row ``i`` of both is pair ``i``)."""
        positive, negative = list(positive), list(negative)
        if not positive or not negative:
            raise DataError("contrast pairs have an empty side: give at least one positive and "
                            "one negative text")
        if len(positive) != len(negative):
            raise DataError(f"contrast pairs need as many positive as negative texts "
                            f"({len(positive)} vs {len(negative)})")
        for side, texts in (("positive", positive), ("negative", negative)):
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise DataError(f"pair {i} has an empty {side} side: every pair needs both "
                                    "a positive and a negative text")
        acts = collect(self.lm, positive + negative, self.sites, self.position,
                       self.batch_size, self.progress, threads=self.threads)
        n = len(positive)
        return self._build({s: (a[:n], a[n:]) for s, a in acts.items()}, source, n_pairs=n)

    def fit_labeled(self, texts: Sequence[str], labels: Sequence[int],
                    source: str = "") -> SteeringVector:
        """Fit from labeled rows (label 1 = positive side); paired methods are not available."""
        if self.method in PAIRED and self.method != "mean-diff":
            raise ConfigError(f"method {self.method} needs contrast pairs; use class-mean or "
                              "logistic for labeled rows")
        lab = torch.as_tensor(list(labels))
        if set(lab.tolist()) - {0, 1}:
            raise DataError("labeled data for a steering vector must be binary (0/1); "
                            "pick two classes")
        if (lab == 1).sum() == 0 or (lab == 0).sum() == 0:
            raise DataError("labeled data has an empty side: both classes need rows")
        acts = collect(self.lm, list(texts), self.sites, self.position, self.batch_size,
                       self.progress, threads=self.threads)
        method = "class-mean" if self.method == "mean-diff" else self.method
        return self._build({s: (a[lab == 1], a[lab == 0]) for s, a in acts.items()}, source,
                           method=method, n_rows=len(lab))

    def fit(self, data: Any, source: str = "") -> SteeringVector:
        """Fit from a ``ContrastPairs`` or ``LabeledDataset`` (``reprlab.data``)."""
        if hasattr(data, "positive") and hasattr(data, "negative"):
            return self.fit_pairs(data.positive, data.negative,
                                  source or getattr(data, "name", ""))
        if hasattr(data, "texts") and hasattr(data, "labels"):
            if len(getattr(data, "classes", ["0", "1"])) != 2:
                raise DataError("a steering vector needs a binary dataset; pick two classes")
            return self.fit_labeled(data.texts, data.labels, source or getattr(data, "name", ""))
        raise DataError(f"cannot fit a steering vector from a {type(data).__name__}; pass "
                        "ContrastPairs or a binary LabeledDataset")

    def _build(self, acts: dict[str, tuple[torch.Tensor, torch.Tensor]], source: str,
               method: str | None = None, **counts: int) -> SteeringVector:
        method = method or self.method
        dirs, scales, diag = {}, {}, {}
        for site, (pos, neg) in acts.items():
            u, scale = estimate(method, pos, neg)
            dirs[site], scales[site] = u, scale
            pp, pn = pos.double() @ u.double(), neg.double() @ u.double()
            row = {"scale": scale, "mean_gap": float(pp.mean() - pn.mean())}
            if pp.shape == pn.shape:
                row["pair_accuracy"] = float((pp > pn).double().mean())
            diag[site] = row
        info = {"diagnostics": diag, **counts}
        return SteeringVector(dirs, scales, model=self.lm.identity(), method=method,
                              position=self.position, source=source, info=info)


def fit_steering_vector(lm: LoadedModel, data: Any, sites: Any = "layers.*",
                        method: str = "mean-diff", position: str = "last",
                        batch_size: int = 32, progress: bool = True,
                        threads: int | None = None) -> SteeringVector:
    """One call: fit a steering vector on ``data`` (ContrastPairs / LabeledDataset)."""
    return SteeringFitter(lm, sites, method, position, batch_size, progress,
                          threads).fit(data)
