"""SimPER (Xiao et al. 2025): reference-free, no β — inverse perplexities.

loss = −exp(mean log π(chosen)) + exp(mean log π(rejected)). It is defined on per-token means
(a perplexity), so ``aggregation`` does not change it. TRL 1.16 has no SimPER; the tests check
it against this formula and its gradient signs.
"""

from __future__ import annotations

import torch

from reprlab.prefs.losses.common import PairLogps


def simper_loss(logps: PairLogps, **_: float) -> torch.Tensor:
    """Per-pair SimPER loss [B] in [−1, 1]; needs no reference."""
    c, r = logps.aggregated("mean")
    return -torch.exp(c) + torch.exp(r)
