"""TopK: widen the separation in the k dimensions where the reference separates most.

Source: ``reprpo/interventions/losses/topk.py`` of wassname/repr-preference-optimization,
the version with ``topk_n``, ``margin`` and ``α`` options (separation reward ``−|Δπ_i|``
plus ``α·relu(|Δπ_i| − margin)`` over the top-k dimensions of the policy's own difference;
commit 0c99fef). Its first version hard-coded k = 600, margin 2 and weight 0.1. The same
repository's ``topkl.py`` is a different objective, not implemented here: top-k dimensions of
the unit-normalised reference separation over all layers, and a squared pull of the policy's
projection ratio toward ``trust_region`` with penalties below 1 and above it.
Per site and row, ``K`` = the ``k`` dimensions of largest ``|Δr_i|`` (the reference
difference, chosen per row)::

    s_i  = sign(Δr_i) · Δπ_i / |Δr_i|          separation along the reference sign, in units
                                              of the reference's (1 at the reference)  [B, k]
    loss = mean_sites mean_{i∈K} (−s_i + α · relu(s_i − m))                            [B]

Past the margin ``m`` (default: twice the reference separation) the penalty ``α`` takes over,
so with α ≥ 1 the loss is bounded below by ``−m`` and the states are not pushed arbitrarily
far (α < 1: unbounded below, as in the research default α = 0.1, refused here unless
``allow_unbounded``).

Deviations from the research code: it selected dimensions by the *policy's* own difference
and scored ``|Δπ_i|``, so a dimension whose sign flipped (the policy now preferring the
rejected side) was rewarded like a widened one; the issue's intent — the reference's top-k
dimensions, separation along the reference sign — is implemented. Its ``detach_ref`` option
detached the policy's rejected states; that is ``detach_rejected`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError
from reprlab.prefs.repr_losses.base import ReprInputs, ReprLoss, check_options, finish, over_sites


@dataclass(frozen=True)
class TopKOptions:
    k: int = 32
    """number of dimensions (capped at the site's width)"""
    alpha: float = 2.0
    """slope of the penalty past the margin (>= 1 keeps the loss bounded below)"""
    margin: float = 2.0
    """separation, in units of the reference's, beyond which widening stops paying"""
    detach_rejected: bool = False
    """no gradient through the policy's rejected states"""
    allow_unbounded: bool = False
    """permit alpha < 1 (the loss is then unbounded below)"""
    eps: float = 1e-4

    def __post_init__(self) -> None:
        check_options(self)
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.alpha < 1 and not self.allow_unbounded:
            raise ConfigError(f"topk alpha={self.alpha} < 1 makes the loss unbounded below; "
                              "use alpha >= 1 or set allow_unbounded")


def _site(pc, pr, rc, rr, o: TopKOptions) -> dict[str, torch.Tensor]:
    if o.detach_rejected:
        pr = pr.detach()
    d_ref = rc - rr
    k = min(o.k, d_ref.shape[-1])
    idx = d_ref.abs().topk(k, dim=-1).indices
    ref_k = d_ref.gather(-1, idx)
    pi_k = (pc - pr).gather(-1, idx)
    s = torch.sign(ref_k) * pi_k / (ref_k.abs() + o.eps)
    rows = (-s + o.alpha * F.relu(s - o.margin)).mean(-1)
    return {"rows": rows, "sep": s.mean(-1)}


def topk_loss(x: ReprInputs, opts: TopKOptions = TopKOptions()) -> ReprLoss:
    """TopK (module docstring)."""
    t = over_sites(x, _site, o=opts)
    return finish(t["rows"], sep_ratio=t["sep"])
