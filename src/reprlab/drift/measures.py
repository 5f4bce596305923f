"""Registry of cloud-to-cloud measures used by the drift workflows.

Unpaired distances (:data:`DISTANCES`) compare two clouds as distributions and take any
sample sizes; paired measures (:data:`reprlab.drift.similarity.PAIRED`) need the same inputs
row for row. Every distance returns a :class:`Measured` (values and convergence flags, one
per pair) so that non-convergence travels with the number it concerns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reprlab.drift import ot
from reprlab.drift.similarity import PAIRED
from reprlab.errors import ConfigError


@dataclass
class Measured:
    """``values [B]`` and ``converged [B]`` (all True for closed-form measures)."""

    values: torch.Tensor
    converged: torch.Tensor


def _ok(v: torch.Tensor) -> Measured:
    return Measured(v, torch.ones(v.shape, dtype=torch.bool, device=v.device))


def _sinkhorn(x, y, eps=None, rel_eps=0.1, tol=1e-5, max_iter=5000, **_):
    r = ot.sinkhorn_divergence(x, y, eps=eps, rel_eps=rel_eps, tol=tol, max_iter=max_iter)
    return Measured(r.divergence, r.converged)


def _emd(x, y, max_points=3000, **_):
    return _ok(ot.emd2(x, y, max_points=max_points))


def _sliced(x, y, n_proj=128, seed=0, **_):
    return _ok(ot.sliced_wasserstein(x, y, n_proj=n_proj, seed=seed))


def _bures(x, y, **_):
    return _ok(ot.bures_wasserstein(x, y))


#: unpaired distances (squared-Euclidean scale): name -> fn(x [B,n,d], y [B,m,d], **opts)
DISTANCES: dict[str, Callable[..., Measured]] = {
    "sinkhorn": _sinkhorn,
    "emd": _emd,
    "sliced": _sliced,
    "bures": _bures,
}

#: measures where larger means more similar (all others: larger means further apart)
SIMILARITIES = {"cka"}


def measure(name: str, x: torch.Tensor, y: torch.Tensor, **opts) -> Measured:
    """Apply the measure ``name`` to batched pairs ``x [B, n, d]``, ``y [B, m, d]``."""
    if name in DISTANCES:
        return DISTANCES[name](x, y, **opts)
    if name in PAIRED:
        return _ok(PAIRED[name](x, y))
    raise ConfigError(f"unknown measure {name!r}; use any of {', '.join(all_measures())}")


def all_measures() -> list[str]:
    return [*DISTANCES, *PAIRED]


def is_paired(name: str) -> bool:
    return name in PAIRED
