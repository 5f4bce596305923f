"""Hinge (SLiC-style) preference loss: max(0, 1 − βΔ)."""

from __future__ import annotations

import torch

from reprlab.prefs.losses.common import PairLogps


def hinge_loss(logps: PairLogps, *, beta: float, aggregation: str = "sum",
               **_: float) -> torch.Tensor:
    """Per-pair hinge loss [B] = relu(1 − β Δ)."""
    return torch.relu(1 - beta * logps.margin(aggregation))
