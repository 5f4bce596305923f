"""Conservative DPO (cDPO, Mitchell 2023): DPO with label smoothing ε.

Labels are flipped with probability ε: −(1−ε) log σ(βΔ) − ε log σ(−βΔ). It is TRL's ``aot``
formula for a single pair (where its sorting is the identity); TRL 1.16's ``sigmoid`` itself
has no smoothing any more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.prefs.losses.common import PairLogps


def conservative_loss(logps: PairLogps, *, beta: float, label_smoothing: float = 0.1,
                      aggregation: str = "sum", **_: float) -> torch.Tensor:
    """Per-pair cDPO loss [B]; ``label_smoothing`` ε in [0, 0.5)."""
    z = beta * logps.margin(aggregation)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
