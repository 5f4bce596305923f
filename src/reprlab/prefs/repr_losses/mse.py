"""MSE / circuit-breaker loss: reroute rejected states to the chosen, retain chosen states.

Source: the ``mse`` loss of the ReprPO research (wassname/repr-preference-optimization,
``reprpo/interventions/losses/mse.py``), itself after circuit breakers (Zou et al. 2024,
arXiv:2406.04313). Distances are log-ratios to the reference separation, so the loss has the
same scale at every site and model.

Per site and row (``‖·‖_ε`` the smoothed norm, see :mod:`.base`)::

    reroute = log ‖π_rej − ref_cho‖_ε − log ‖Δr‖_ε     rejected moves to reference chosen
    retain  = log ‖π_cho − ref_cho‖_ε − log ‖Δr‖_ε     chosen stays at reference chosen
    loss    = mean_sites(reroute + α · retain)          [B]

Bounded below by ``(1 + α) · log(ε / ‖Δr‖_ε)`` (both distances reach ε); finite gradient at
policy == reference (the smoothed norm has gradient 0 at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reprlab.prefs.repr_losses.base import (
    ReprInputs,
    ReprLoss,
    check_options,
    finish,
    over_sites,
    snorm,
)


@dataclass(frozen=True)
class MSEOptions:
    alpha: float = 1.0
    """weight of the retain term (chosen states stay where the reference had them)"""
    eps: float = 1e-4
    """smoothing of norms (in hidden-state units)"""

    def __post_init__(self) -> None:
        check_options(self)


def _site(pc, pr, rc, rr, alpha: float, eps: float) -> dict[str, torch.Tensor]:
    log_ref = torch.log(snorm(rc - rr, eps))
    reroute = torch.log(snorm(pr - rc, eps)) - log_ref
    retain = torch.log(snorm(pc - rc, eps)) - log_ref
    return {"rows": reroute + alpha * retain, "reroute": reroute, "retain": retain}


def mse_loss(x: ReprInputs, opts: MSEOptions = MSEOptions()) -> ReprLoss:
    """Circuit-breaker style reroute/retain loss on log-distance ratios (module docstring)."""
    t = over_sites(x, _site, alpha=opts.alpha, eps=opts.eps)
    return finish(t["rows"], reroute=t["reroute"], retain=t["retain"])
