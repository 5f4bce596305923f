"""Change points (phase transitions) in drift series and training curves.

:func:`detect` runs PELT (Killick et al. 2012) with a least-squares (mean-shift) cost through
``ruptures`` with ``jump=1`` (the library's default ``jump=5`` only considers every fifth index,
too coarse for short series) and a small ``min_size``. Without ``ruptures`` a binary
segmentation on mean shifts with the same penalty is used. The default penalty is
``3 σ² log n`` with the noise σ estimated robustly from first differences (median absolute
deviation), so flat noisy stretches do not produce change points, and at least 2% of the
series' total variation, so smooth trends do not split into many tiny steps.

Each change point is reported as the training step where the new segment starts, with the
means before and after and their difference (``magnitude``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from reprlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangePoint:
    """A change at ``index`` (first index of the new segment) = training ``step``."""

    index: int
    step: float
    before: float
    after: float
    magnitude: float

    def to_dict(self) -> dict:
        return asdict(self)


def noise_sigma(y: torch.Tensor) -> float:
    """Robust noise level: MAD of first differences / (0.6745 √2)."""
    if len(y) < 3:
        return float(y.std()) if len(y) > 1 else 0.0
    d = torch.diff(y)
    mad = (d - d.median()).abs().median()
    return float(mad) / (0.6745 * math.sqrt(2))


def default_penalty(y: torch.Tensor, scale: float = 3.0, min_share: float = 0.02) -> float:
    """``max(scale σ² log n, min_share × total sum of squares)``: a change must beat the noise
    and explain at least ``min_share`` of the series' variation (smooth trends otherwise split
    into many tiny steps)."""
    s = noise_sigma(y)
    total = float(((y - y.mean()) ** 2).sum())
    return max(scale * s * s * math.log(max(len(y), 2)), min_share * total, 1e-12)


def _sse(c1: torch.Tensor, c2: torch.Tensor, a: int, b: int) -> float:
    """Sum of squared deviations from the mean on y[a:b] via cumulative sums."""
    n = b - a
    s = c1[b] - c1[a]
    return float(c2[b] - c2[a] - s * s / n)


def _binseg(y: torch.Tensor, pen: float, min_size: int) -> list[int]:
    """Binary segmentation on mean shifts; returns sorted breakpoints (segment starts)."""
    y = y.double()
    c1 = torch.cat([y.new_zeros(1), y.cumsum(0)])
    c2 = torch.cat([y.new_zeros(1), (y * y).cumsum(0)])
    bkps: list[int] = []
    segments = [(0, len(y))]
    while segments:
        a, b = segments.pop()
        if b - a < 2 * min_size:
            continue
        whole = _sse(c1, c2, a, b)
        best, gain = None, 0.0
        for t in range(a + min_size, b - min_size + 1):
            g = whole - _sse(c1, c2, a, t) - _sse(c1, c2, t, b)
            if g > gain:
                best, gain = t, g
        if best is not None and gain > pen:
            bkps.append(best)
            segments += [(a, best), (best, b)]
    return sorted(bkps)


def _pelt_ruptures(y: torch.Tensor, pen: float, min_size: int) -> list[int]:
    import ruptures as rpt

    algo = rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(y.double().numpy().reshape(-1, 1))
    return [b for b in algo.predict(pen=pen) if b < len(y)]


#: change-point methods: name -> fn(y [T], penalty, min_size) -> breakpoints
METHODS = {"pelt": _pelt_ruptures, "binseg": _binseg}


def detect(series: Sequence[float] | torch.Tensor, steps: Sequence[float] | None = None, *,
           penalty: float | None = None, min_size: int = 2, method: str = "pelt",
           log: bool = False) -> list[ChangePoint]:
    """Change points of ``series [T]`` at training ``steps [T]`` (indices if omitted).

    ``log``: detect on ``log(series)`` (positive series spanning orders of magnitude, e.g.
    losses); magnitudes are still reported on the original scale. NaNs are dropped.
    """
    y = torch.as_tensor(list(series) if not isinstance(series, torch.Tensor) else series,
                        dtype=torch.float64).flatten()
    st = torch.arange(len(y), dtype=torch.float64) if steps is None else torch.as_tensor(
        list(steps), dtype=torch.float64)
    if len(st) != len(y):
        raise DataError(f"{len(y)} values but {len(st)} steps")
    keep = ~torch.isnan(y)
    y, st = y[keep], st[keep]
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}")
    if len(y) < 2 * min_size:
        return []
    work = y.clamp_min(1e-300).log() if log else y
    pen = default_penalty(work) if penalty is None else float(penalty)
    if method not in METHODS:
        raise ConfigError(f"unknown change-point method {method!r}; use one of {', '.join(METHODS)}")
    try:
        bkps = METHODS[method](work, pen, min_size)
    except ImportError:
        logger.info("ruptures is not installed; using binary segmentation")
        bkps = _binseg(work, pen, min_size)
    edges = [0, *bkps, len(y)]
    out = []
    for k, b in enumerate(bkps):
        before = float(y[edges[k]:b].mean())
        after = float(y[b:edges[k + 2]].mean())
        out.append(ChangePoint(int(b), float(st[b]), before, after, after - before))
    return out


def strongest(points: Sequence[ChangePoint], direction: str = "any", log: bool = True,
              after_step: float | None = None) -> ChangePoint | None:
    """The largest change: by ``|log(after/before)|`` (``log``) or ``|after - before|``.

    ``direction``: ``"up"`` (only increases, e.g. a burst of drift), ``"down"`` or ``"any"``;
    ``after_step``: only changes after this step.
    """
    if direction not in ("up", "down", "any"):
        raise ConfigError(f"direction must be up, down or any, got {direction!r}")
    cands = [p for p in points if (after_step is None or p.step > after_step)
             and (direction == "any" or (p.magnitude > 0) == (direction == "up"))]
    if not cands:
        return None

    def size(p: ChangePoint) -> float:
        if log and p.before > 0 and p.after > 0:
            return abs(math.log(p.after / p.before))
        return abs(p.magnitude) / max(abs(p.before), abs(p.after), 1e-300) if log else abs(p.magnitude)

    return max(cands, key=size)
