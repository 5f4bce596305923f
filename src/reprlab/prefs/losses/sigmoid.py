"""Standard DPO (Rafailov et al. 2023): −log σ(β Δ)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.prefs.losses.common import PairLogps


def sigmoid_loss(logps: PairLogps, *, beta: float, aggregation: str = "sum",
                 **_: float) -> torch.Tensor:
    """Per-pair DPO loss [B] = −log σ(β Δ), Δ the chosen-minus-rejected log-ratio margin.

    With ``aggregation="mean"`` the log-ratios are per-token means (TRL's ``sigmoid_norm``).
    """
    return -F.logsigmoid(beta * logps.margin(aggregation))
