"""Robust DPO (Chowdhury et al. 2024): an unbiased loss under label flips with rate ε."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.prefs.losses.common import PairLogps


def robust_loss(logps: PairLogps, *, beta: float, label_smoothing: float = 0.1,
                aggregation: str = "sum", **_: float) -> torch.Tensor:
    """Per-pair robust DPO loss [B] = ((1−ε)(−log σ(βΔ)) − ε(−log σ(−βΔ))) / (1 − 2ε)."""
    z = beta * logps.margin(aggregation)
    clean = -(1 - label_smoothing) * F.logsigmoid(z)
    flipped = -label_smoothing * F.logsigmoid(-z)
    return (clean - flipped) / (1 - 2 * label_smoothing)
