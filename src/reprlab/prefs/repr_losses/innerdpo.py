"""InnerDPO: output DPO (or IPO) plus α × the same loss on a hidden-state "logit".

Source: ``reprpo/interventions/losses/innerdpo.py`` of wassname/repr-preference-optimization.
With the notation of :mod:`.base`, per row::

    θ_h  = mean_sites align(Δπ, Δr, states)        hidden logit [B] (see :mod:`.align`)
    loss = L(ρ; β) + α · L(θ_h; β_h)                 [B]

where ``L`` is ``sigmoid`` (DPO, −log σ(β·x)) or ``ipo`` ((x − 1/(2β))²), the same kind for
both terms.

Trust region τ (``trust_region``, 0 = off). It caps the reward for moving the hidden states:
the hidden term stops paying once the policy's separation along û reaches ``(1 + τ)·‖Δr‖``
(τ = 2: three times the reference's), so it cannot pull the states arbitrarily far. The cap
is one statement applied in each align method's own units — the signed separation ``p`` is
clamped to ``(1 + τ)‖Δr‖`` before the align method reads it:

    pars_ratio          θ_h ≤ τ                       (units of ‖Δr‖, 0 at the reference)
    para_signed         θ_h ≤ (1 + τ)·‖Δr‖            (hidden-state units, per row)
    direct_projection   θ_h ≤ τ·‖Δr‖                  (hidden-state units, per row)
    para_orth_signed    its parallel part ≤ (1 + τ)·‖Δr‖; the orthogonal penalty still acts
    logodds_noref       its relative parallel part ≤ 1 + τ; the orthogonal part still acts
    cosine_cross_model  θ_h ≤ τ in cosine units (θ_h ≤ 2 always, so τ ≥ 2 never binds)

The research code clamped θ_h itself at τ = 2 for every align method. That is the cap above
only for ``pars_ratio``; for ``para_signed`` and ``para_orth_signed`` (θ_h ≈ ‖Δr‖ at the
reference) the hidden term was flat — gradient exactly 0 — on every row of a model whose
‖Δr‖ exceeds about 2, and for ``logodds_noref`` (θ_h ≈ −log ε at the reference) on every
row at any scale, silently turning InnerDPO into DPO. The share of rows on which the hidden
term's gradient vanishes is logged as ``hidden_flat``; the trainer warns when it is most.

β_h (``beta_hidden``). ``para_signed``, ``para_orth_signed`` and ``direct_projection`` give
θ_h in hidden-state units; at a real model's scale (‖Δr‖ in the hundreds) ``−log σ(θ_h)`` is
saturated from the first step. By default their θ_h is divided by ‖Δr‖ (per row, no
gradient) so that β_h = 1 acts in units of the reference separation; an explicit
``beta_hidden`` uses the raw θ_h, as the research code did.

``detach_rejected`` stops the gradient through the policy's rejected states, so only chosen
states move.

Deviations from the research code: one version's default output loss was SimPER; under it
the align method was ignored and the *hidden-state* term was sign-inverted (it fell as the
hidden separation shrank) — the output term in ρ kept its sign. Only DPO and IPO output
losses are offered here and the hidden term always uses the align method. Bounded below by
0 (both terms are).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    beta_hidden: float | None = None
    """β of the hidden-state term (default: 1, with the hidden-state-unit align methods'
    θ_h read in units of ‖Δr‖)"""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) or ipo, for both terms"""
    trust_region: float = 2.0
    """the hidden term stops paying once the separation along the reference direction
    reaches (1 + trust_region) x the reference's, in each align method's units (0 = off)"""
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


#: align methods whose θ_h is in hidden-state units (‖Δr‖ is in the hundreds on real models,
#: where −log σ(θ_h) is saturated: gradient ~e^-‖Δr‖); by default their θ_h is divided by ‖Δr‖
HIDDEN_UNITS = ("para_signed", "para_orth_signed", "direct_projection")


def _site(pc, pr, rc, rr, o: InnerDPOOptions) -> dict[str, torch.Tensor]:
    if o.detach_rejected:
        pr = pr.detach()
    g = Geometry.of(pc, pr, rc, rr, o.eps)
    align = ALIGN_METHODS[o.align]
    raw = align(g, pc, pr, rc, rr, o.eps)
    theta = raw
    if o.trust_region > 0:
        if o.align == "cosine_cross_model":
            theta = raw.clamp(max=o.trust_region)
        else:  # cap the separation along û, then read it in the method's own units
            capped = replace(g, p=torch.minimum(g.p, (1.0 + o.trust_region) * g.ref_mag))
            theta = align(capped, pc, pr, rc, rr, o.eps)
    if o.beta_hidden is None and o.align in HIDDEN_UNITS:
        theta = theta / g.ref_mag
    return {"theta": theta, "theta_raw": raw, "sep": g.p / g.ref_mag, "ref_mag": g.ref_mag}


#: per-row hidden-term gradient (w.r.t. the pooled policy states) times ‖Δr‖ below which the
#: row counts as flat: moving the separation by the reference's own changes the loss < 1e-6
FLAT = 1e-6


def flat_rows(hidden: torch.Tensor, x: ReprInputs, scale: torch.Tensor) -> torch.Tensor | None:
    """``[B]`` bool: rows on which ``hidden`` (per-row loss) has no gradient w.r.t. the pooled
    policy states, or None when the states carry no graph."""
    states = [t for k in x.sites for t in (x.pi_cho[k], x.pi_rej[k]) if t.requires_grad]
    if not states or not torch.is_grad_enabled() or not hidden.requires_grad:
        return None
    grads = torch.autograd.grad(hidden.sum(), states, retain_graph=True, allow_unused=True)
    sq = sum(g.pow(2).sum(-1) for g in grads if g is not None)
    if not torch.is_tensor(sq):
        return torch.ones_like(hidden, dtype=torch.bool)
    return (sq.sqrt() * scale).detach() < FLAT


def innerdpo_loss(x: ReprInputs, opts: InnerDPOOptions = InnerDPOOptions()) -> ReprLoss:
    """InnerDPO (module docstring)."""
    t = over_sites(x, _site, o=opts)
    rho = x.rho()
    out = dpo_shaped(rho, opts.beta, opts.loss_type)
    hid = dpo_shaped(t["theta"], opts.beta_hidden or 1.0, opts.loss_type)
    metrics = dict(loss_dpo=out, loss_hidden=hid, rho=rho, theta=t["theta_raw"],
                   sep_ratio=t["sep"])
    flat = flat_rows(hid, x, t["ref_mag"].detach())
    if flat is not None:
        metrics["hidden_flat"] = flat.float()
    return finish(out + opts.alpha * hid, **metrics)
