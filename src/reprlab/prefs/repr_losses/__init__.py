"""Representation preference losses: one pure function a file, registered by name.

``REPR_LOSSES[name]`` is a :class:`ReprLossSpec`; :func:`make_options` builds a loss's options
from keyword arguments and refuses, with one line naming the valid ones, an option that does
not apply to that loss. Every function maps :class:`ReprInputs` (completion-pooled states per
site, optional log-probs) and its options to a :class:`ReprLoss`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reprlab.errors import ConfigError
from reprlab.prefs.repr_losses.align import ALIGN_METHODS
from reprlab.prefs.repr_losses.base import ReprInputs, ReprLoss
from reprlab.prefs.repr_losses.innerdpo import InnerDPOOptions, innerdpo_loss
from reprlab.prefs.repr_losses.mse import MSEOptions, mse_loss
from reprlab.prefs.repr_losses.prefvec import PrefVecOptions, prefvec_loss
from reprlab.prefs.repr_losses.rank import RankOptions, rank_loss
from reprlab.prefs.repr_losses.topk import TopKOptions, topk_loss

__all__ = ["ALIGN_METHODS", "REPR_LOSSES", "ReprInputs", "ReprLoss", "ReprLossSpec",
           "make_options"]


@dataclass(frozen=True)
class ReprLossSpec:
    """A registered loss: the function, its options class, and whether it reads log-probs
    (always, or only when its ``alpha`` weight of an output term is > 0)."""

    name: str
    fn: Callable[[ReprInputs, Any], ReprLoss]
    options: type
    needs_logps: bool


REPR_LOSSES: dict[str, ReprLossSpec] = {
    s.name: s for s in (
        ReprLossSpec("innerdpo", innerdpo_loss, InnerDPOOptions, True),
        ReprLossSpec("prefvec", prefvec_loss, PrefVecOptions, True),
        ReprLossSpec("mse", mse_loss, MSEOptions, False),
        ReprLossSpec("rank", rank_loss, RankOptions, True),
        ReprLossSpec("topk", topk_loss, TopKOptions, False),
    )
}


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(REPR_LOSSES[name].options)]


def make_options(name: str, **kwargs: Any) -> Any:
    """Options of loss ``name``; ``None`` values are left at their defaults."""
    if name not in REPR_LOSSES:
        raise ConfigError(f"unknown representation loss {name!r}; use one of "
                          f"{', '.join(REPR_LOSSES)}")
    valid = option_names(name)
    given = {k.replace("-", "_"): v for k, v in kwargs.items() if v is not None}
    bad = [k for k in given if k not in valid]
    if bad:
        raise ConfigError(f"option {', '.join(bad)} does not apply to the {name} loss; its "
                          f"options are {', '.join(valid)}")
    return REPR_LOSSES[name].options(**given)
