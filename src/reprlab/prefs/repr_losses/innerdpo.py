"""InnerDPO: output DPO (or IPO) plus α × the same loss on a hidden-state "logit".

Source: ``reprpo/interventions/losses/innerdpo.py`` of wassname/repr-preference-optimization.
With the notation of :mod:`.base`, per row::

    θ_h  = mean_sites align(Δπ, Δr, states)        hidden logit [B] (see :mod:`.align`)
    θ_h  = min(θ_h, τ)                               trust region (when τ > 0)
    loss = L(ρ; β) + α · L(θ_h; β_h)                 [B]

where ``L`` is ``sigmoid`` (DPO, −log σ(β·x)) or ``ipo`` ((x − 1/(2β))²), the same kind for
both terms. The trust region caps the reward for moving the hidden states: beyond τ the hidden
term is flat, so it cannot pull the states arbitrarily far (for ``pars_ratio`` τ = 2 means
"at most three times the reference separation"). ``detach_rejected`` stops the gradient
through the policy's rejected states, so only chosen states move.

Deviations from the research code: its default output loss was SimPER, under which the
align method was ignored and the combined loss decreased as ρ fell (sign-inverted); only DPO
and IPO output losses are offered and the hidden term always uses the align method. Bounded
below by 0 (both terms are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reprlab.errors import ConfigError
from reprlab.prefs.repr_losses.align import ALIGN_METHODS
from reprlab.prefs.repr_losses.base import (
    Geometry,
    ReprInputs,
    ReprLoss,
    check_options,
    dpo_shaped,
    finish,
    over_sites,
)


@dataclass(frozen=True)
class InnerDPOOptions:
    align: str = "pars_ratio"
    """hidden logit: pars_ratio, para_signed, para_orth_signed, logodds_noref,
    cosine_cross_model or direct_projection"""
    alpha: float = 0.5
    """weight of the hidden-state term"""
    beta: float = 0.1
    """β of the output term"""
    beta_hidden: float = 1.0
    """β of the hidden-state term"""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) or ipo, for both terms"""
    trust_region: float = 2.0
    """cap on the hidden logit (0 = no cap)"""
    detach_rejected: bool = False
    """no gradient through the policy's rejected states"""
    eps: float = 1e-4

    def __post_init__(self) -> None:
        check_options(self)
        align = self.align.replace("-", "_")
        if align not in ALIGN_METHODS:
            raise ConfigError(f"unknown align method {self.align!r}; use one of "
                              f"{', '.join(ALIGN_METHODS)}")
        object.__setattr__(self, "align", align)
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ConfigError(f"unknown loss_type {self.loss_type!r}; use sigmoid or ipo")
        if self.trust_region < 0:
            raise ConfigError(f"trust_region must be >= 0 (0 = off), got {self.trust_region}")


def _site(pc, pr, rc, rr, o: InnerDPOOptions) -> dict[str, torch.Tensor]:
    if o.detach_rejected:
        pr = pr.detach()
    g = Geometry.of(pc, pr, rc, rr, o.eps)
    theta = ALIGN_METHODS[o.align](g, pc, pr, rc, rr, o.eps)
    return {"theta": theta, "sep": g.p / g.ref_mag}


def innerdpo_loss(x: ReprInputs, opts: InnerDPOOptions = InnerDPOOptions()) -> ReprLoss:
    """InnerDPO (module docstring)."""
    t = over_sites(x, _site, o=opts)
    theta = t["theta"]
    if opts.trust_region > 0:
        theta = theta.clamp(max=opts.trust_region)
    rho = x.rho()
    out = dpo_shaped(rho, opts.beta, opts.loss_type)
    hid = dpo_shaped(theta, opts.beta_hidden, opts.loss_type)
    return finish(out + opts.alpha * hid, loss_dpo=out, loss_hidden=hid, rho=rho,
                  theta=t["theta"], sep_ratio=t["sep"])
