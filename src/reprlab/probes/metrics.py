"""Classification metrics on batched predictions, with vectorised bootstrap intervals.

Every function takes probabilities ``probs [..., n, K]`` and integer labels ``y [..., n]``
(leading dimensions broadcast) and returns one value per leading index, so a whole sweep
(layers x probes) is scored in one call. Bootstrap resamples are drawn once as an index
matrix ``[R, n]`` and applied to all leading dimensions together.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max class equals the label. ``[..., n, K], [..., n] -> [...]``."""
    return (probs.argmax(-1) == y).to(probs.dtype).mean(-1)


def log_loss(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the true class (natural log), clipped at 1e-7."""
    p = probs.gather(-1, y.expand(probs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -(p.clamp_min(EPS).log()).mean(-1)


def _binary_auroc(score: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney AUROC with average ranks for ties. ``score, pos [..., n] -> [...]``.

    NaN where a row set holds only one class.
    """
    score = score.to(torch.float64)
    srt, _ = score.sort(-1)
    lo = torch.searchsorted(srt.contiguous(), score.contiguous(), side="left")
    hi = torch.searchsorted(srt.contiguous(), score.contiguous(), side="right")
    ranks = (lo + hi + 1).to(torch.float64) / 2.0  # 1-based average rank
    posf = pos.to(torch.float64)
    n_pos = posf.sum(-1)
    n_neg = pos.shape[-1] - n_pos
    u = (ranks * posf).sum(-1) - n_pos * (n_pos + 1) / 2.0
    auc = u / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))


def auroc(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AUROC: binary on the class-1 probability; multiclass as the macro one-vs-rest mean."""
    y = y.expand(probs.shape[:-1])
    k = probs.shape[-1]
    if k == 2:
        return _binary_auroc(probs[..., 1], y == 1).to(probs.dtype)
    per = torch.stack([_binary_auroc(probs[..., c], y == c) for c in range(k)], -1)
    return per.nanmean(-1).to(probs.dtype)


#: metric name -> function(probs [..., n, K], y [..., n]) -> [...]
METRICS = {"accuracy": accuracy, "auroc": auroc, "log_loss": log_loss}


def majority_baseline(y_train: torch.Tensor, y_test: torch.Tensor, n_classes: int) -> float:
    """Accuracy on ``y_test`` of always predicting the most frequent training class."""
    counts = torch.bincount(y_train.flatten(), minlength=n_classes)
    return float((y_test == counts.argmax()).double().mean())


def bootstrap_indices(n: int, resamples: int, seed: int) -> torch.Tensor:
    """``[R, n]`` row indices drawn with replacement from a seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (resamples, n), generator=gen)


def score(probs: torch.Tensor, y: torch.Tensor, *, resamples: int = 1000, seed: int = 0,
          level: float = 0.95, metrics: tuple[str, ...] = ("accuracy", "auroc", "log_loss"),
          chunk: int = 200) -> dict[str, dict[str, torch.Tensor]]:
    """Point estimates and percentile-bootstrap intervals for every leading index.

    ``probs [..., n, K]``, ``y [n]`` (shared rows). Returns ``{metric: {"value", "lo", "hi"}}``
    with tensors of shape ``[...]``. Resamples are processed ``chunk`` at a time (memory).
    """
    lead = probs.shape[:-2]
    n, k = probs.shape[-2:]
    flat = probs.reshape(-1, n, k)
    out: dict[str, dict[str, torch.Tensor]] = {}
    idx = bootstrap_indices(n, resamples, seed) if resamples > 0 else None
    a = (1.0 - level) / 2.0
    for name in metrics:
        fn = METRICS[name]
        value = fn(flat, y).reshape(lead)
        lo = hi = torch.full(lead, float("nan"), dtype=probs.dtype)
        if idx is not None:
            draws = []
            for s in range(0, resamples, chunk):
                ix = idx[s:s + chunk]  # [r, n]
                pb = flat[:, ix]  # [B, r, n, K]
                yb = y[ix]  # [r, n]
                draws.append(fn(pb, yb))
            d = torch.cat(draws, -1).to(torch.float64)  # [B, R]
            q = torch.nanquantile(d, torch.tensor([a, 1 - a], dtype=torch.float64), dim=-1)
            lo, hi = q[0].reshape(lead).to(probs.dtype), q[1].reshape(lead).to(probs.dtype)
        out[name] = {"value": value, "lo": lo, "hi": hi}
    return out
