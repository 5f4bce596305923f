"""PrefVec: move the policy's chosen−rejected separation along the reference direction.

Source: the ``prefvec`` loss of the ReprPO research (wassname/repr-preference-optimization,
``reprpo/interventions/losses/prefvec.py``). Per site and row, with the notation of
:mod:`.base`::

    s      = ⟨Δπ − Δr, û⟩ / ‖Δr‖_ε         separation gained along û, in units of ‖Δr‖ [B]
    proj   = −tanh(s)                        bounded reroute term, in (−1, 1)
    orth   = ‖(Δπ − Δr)⊥‖_ε / ‖Δr‖_ε        separation change orthogonal to û (≥ 0)
    angle  = 1 − cos_ε(Δπ − Δr, Δr)          the change points along Δr (in [0, 2])
    loss   = mean_sites(proj + β_orth·orth + β_angle·angle) + α · (−log σ(β·ρ))

Deviations from the research code, each implementing its stated intent:

* its output term was ``α·log σ(−ρ)``. Its sign is right — minimising it raises ρ, as DPO
  does — but it is unbounded below (→ −∞ as ρ grows, so it rewards pushing the margin
  without end) and has no β. Here it is DPO's ``−log σ(β·ρ)``, which acts the same way near
  the reference and is bounded below by 0;
* it took ``.mean(-1)`` of the projected *vector* as the signed magnitude, whose sign is that
  of ``mean(û)``, not of the movement; here the scalar projection is used;
* the angle of the movement at policy == reference is 0/0; the smoothed cosine is 0 there and
  its gradient finite.

Bounded below by −1 (all other terms ≥ 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reprlab.prefs.repr_losses.base import (
    ReprInputs,
    ReprLoss,
    check_options,
    dpo_shaped,
    finish,
    over_sites,
    scos,
    snorm,
    unit,
)


@dataclass(frozen=True)
class PrefVecOptions:
    alpha: float = 1.0
    """weight of the output DPO term −log σ(β·ρ) (0 = hidden-state terms only)"""
    beta: float = 0.1
    """DPO β of the output term"""
    orth: bool = True
    """add the orthogonal-movement penalty"""
    angle: bool = True
    """add the angle penalty"""
    beta_orth: float = 1.0
    """weight of the orthogonal penalty"""
    beta_angle: float = 1.0
    """weight of the angle penalty"""
    eps: float = 1e-4

    def __post_init__(self) -> None:
        check_options(self)


def _site(pc, pr, rc, rr, o: PrefVecOptions) -> dict[str, torch.Tensor]:
    d_ref = rc - rr
    mag = snorm(d_ref, o.eps)
    u = unit(d_ref, o.eps)
    move = (pc - pr) - d_ref
    along = (move * u).sum(-1)
    s = along / mag
    proj = -torch.tanh(s)
    orth = snorm(move - along.unsqueeze(-1) * u, o.eps) / mag
    angle = 1.0 - scos(move, d_ref, o.eps)
    rows = proj
    if o.orth:
        rows = rows + o.beta_orth * orth
    if o.angle:
        rows = rows + o.beta_angle * angle
    return {"rows": rows, "sep_gain": s, "orth": orth, "angle": angle}


def prefvec_loss(x: ReprInputs, opts: PrefVecOptions = PrefVecOptions()) -> ReprLoss:
    """PrefVec (module docstring)."""
    t = over_sites(x, _site, o=opts)
    rows = t["rows"]
    metrics = {"sep_gain": t["sep_gain"], "orth": t["orth"], "angle": t["angle"]}
    if opts.alpha > 0:
        rho = x.rho()
        out = dpo_shaped(rho, opts.beta, "sigmoid")
        rows = rows + opts.alpha * out
        metrics.update(loss_dpo=out, rho=rho)
    return finish(rows, hidden=t["rows"], **metrics)
