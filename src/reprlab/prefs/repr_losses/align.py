"""Align methods of InnerDPO: a hidden-state "logit" θ_h ``[B]`` per site, larger = better.

Each maps the geometry of one site (:class:`.base.Geometry`, notation of :mod:`.base`) and the
four pooled states to θ_h; InnerDPO feeds θ_h to a DPO-shaped loss. Source: the ``align_method``
options of ``reprpo/interventions/losses/innerdpo.py`` in wassname/repr-preference-optimization.
Each function states whether θ_h is 0 at policy == reference (as DPO's ρ is).

Where the research formula contradicts its own description, the description is implemented:

* ``logodds_noref`` used ``log‖p û‖ − log‖Δπ⊥‖`` with the *unsigned* parallel magnitude, so
  moving the separation against û scored as well as moving it along û; here the parallel
  part is a smooth positive part of the signed projection (see :func:`logodds_noref`);
* ``direct_projection`` took the L1 norm of ``Δπ ⊙ û`` (unsigned, and not a projection)
  while described as "signed distance"; here it is the signed distance gained along û.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from reprlab.prefs.repr_losses.base import Geometry, scos

Tensor = torch.Tensor
AlignFn = Callable[[Geometry, Tensor, Tensor, Tensor, Tensor, float], Tensor]


def pars_ratio(g: Geometry, pc, pr, rc, rr, eps: float) -> Tensor:
    """``p / ‖Δr‖ − 1``: separation along û relative to the reference's. 0 at the reference."""
    return g.p / g.ref_mag - 1.0


def para_signed(g: Geometry, pc, pr, rc, rr, eps: float) -> Tensor:
    """``p``: raw signed separation along û (hidden-state units). ``‖Δr‖`` at the reference."""
    return g.p


def para_orth_signed(g: Geometry, pc, pr, rc, rr, eps: float) -> Tensor:
    """``p − ‖Δπ⊥‖_ε``: reward separation along û, punish separation off it."""
    return g.p - g.orth_norm(eps)


def logodds_noref(g: Geometry, pc, pr, rc, rr, eps: float, sharp: float = 10.0) -> Tensor:
    """``log(p₊ + ε) − log(‖Δπ⊥‖_ε / ‖Δr‖ + ε)`` with ``p₊ = softplus(k·p/‖Δr‖)/k``, k = 10.

    Log-odds of parallel over orthogonal separation, both in units of ‖Δr‖, with no
    reference log-odds subtracted. ``p₊`` is a smooth positive part of the signed relative
    projection (≈ p/‖Δr‖ when it is clearly positive, → 0 when negative), so θ_h increases
    monotonically with p. Large at the reference (the orthogonal part is 0 there).
    """
    rel = g.p / g.ref_mag
    par = F.softplus(sharp * rel) / sharp
    orth = g.orth_norm(eps) / g.ref_mag
    return torch.log(par + eps) - torch.log(orth + eps)


def cosine_cross_model(g: Geometry, pc, pr, rc, rr, eps: float) -> Tensor:
    """``cos(π_cho, ref_cho) − cos(π_rej, ref_rej)``: chosen states keep their reference
    direction while rejected states turn away from theirs. 0 at the reference, in [−2, 2]."""
    return scos(pc, rc, eps) - scos(pr, rr, eps)


def direct_projection(g: Geometry, pc, pr, rc, rr, eps: float) -> Tensor:
    """``⟨Δπ − Δr, û⟩ = p − ‖Δr‖``: signed distance gained along û. 0 at the reference."""
    return g.p - g.ref_mag


ALIGN_METHODS: dict[str, AlignFn] = {
    "pars_ratio": pars_ratio,
    "para_signed": para_signed,
    "para_orth_signed": para_orth_signed,
    "logodds_noref": logodds_noref,
    "cosine_cross_model": cosine_cross_model,
    "direct_projection": direct_projection,
}
