"""Preference losses: one pure function a file, chosen by name from :data:`LOSSES`.

Every loss maps :class:`PairLogps` (log-probs summed over completion tokens, with token counts)
to a per-pair loss ``[B]``; the trainer takes the batch mean and may add ``nll_weight`` times
:func:`nll_term` (RPO). Each entry records whether it needs the reference and the TRL 1.16
``loss_type`` it matches (checked in tests on the same tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reprlab.prefs.losses.common import AGGREGATIONS, PairLogps, aggregate
from reprlab.prefs.losses.conservative import conservative_loss
from reprlab.prefs.losses.hinge import hinge_loss
from reprlab.prefs.losses.ipo import ipo_loss
from reprlab.prefs.losses.nll import nll_term
from reprlab.prefs.losses.robust import robust_loss
from reprlab.prefs.losses.sigmoid import sigmoid_loss
from reprlab.prefs.losses.simper import simper_loss


@dataclass(frozen=True)
class LossInfo:
    fn: Callable[..., torch.Tensor]
    needs_reference: bool
    summary: str
    trl: str | None  # TRL loss_type with the same value (None: TRL has none)


LOSSES: dict[str, LossInfo] = {
    "sigmoid": LossInfo(sigmoid_loss, True, "standard DPO, -log sigmoid(beta margin)", "sigmoid"),
    "ipo": LossInfo(ipo_loss, True, "IPO, length-normalised (TRL's form)", "ipo"),
    "conservative": LossInfo(conservative_loss, True, "cDPO: DPO with label smoothing",
                             "aot (one pair)"),
    "hinge": LossInfo(hinge_loss, True, "hinge, relu(1 - beta margin)", "hinge"),
    "robust": LossInfo(robust_loss, True, "robust DPO under label flips", "robust"),
    "simper": LossInfo(simper_loss, False, "SimPER, reference-free inverse perplexity", None),
}


def compute_loss(name: str, logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0,
                 aggregation: str = "sum", nll_weight: float = 0.0) -> torch.Tensor:
    """Scalar batch loss: mean of the per-pair loss ``name`` + ``nll_weight`` × NLL term."""
    per_pair = LOSSES[name].fn(logps, beta=beta, label_smoothing=label_smoothing,
                               aggregation=aggregation)
    loss = per_pair.mean()
    if nll_weight:
        loss = loss + nll_weight * nll_term(logps)
    return loss


__all__ = ["AGGREGATIONS", "LOSSES", "LossInfo", "PairLogps", "aggregate", "compute_loss",
           "nll_term"]
