"""IPO (Azar et al. 2023) in TRL's length-normalised form.

(Δ̄ − 1/(2β))², where Δ̄ uses the *per-token mean* log-ratios of chosen and rejected (TRL
divides the summed ratios by the completion lengths, a choice its authors confirmed with the
IPO authors). The loss is therefore already per token: ``aggregation`` does not change it —
"IPO with mean log-probs" and TRL's IPO are the same loss, and neither is standard DPO.
"""

from __future__ import annotations

import torch

from reprlab.prefs.losses.common import PairLogps


def ipo_loss(logps: PairLogps, *, beta: float, aggregation: str = "sum",
             **_: float) -> torch.Tensor:
    """Per-pair IPO loss [B]; β is IPO's τ."""
    c, r = logps.logratios("mean")
    return (c - r - 1 / (2 * beta)) ** 2
