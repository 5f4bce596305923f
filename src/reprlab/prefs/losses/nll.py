"""The NLL (RPO, Pang et al. 2024) term: negative log-likelihood of the chosen completions.

Averaged over every chosen completion token of the batch (not per pair first), as TRL's
``sft`` loss term does; it keeps chosen log-probs from falling while DPO widens the margin.
"""

from __future__ import annotations

import torch

from reprlab.prefs.losses.common import PairLogps


def nll_term(logps: PairLogps) -> torch.Tensor:
    """Scalar: −Σ log π(chosen tokens) / Σ n_chosen over the batch."""
    return -logps.chosen.sum() / logps.n_chosen.to(logps.chosen.dtype).sum().clamp(min=1.0)
