"""Shared inputs, outputs and geometry of the representation preference losses.

Every loss is a pure function ``fn(x: ReprInputs, opts) -> ReprLoss``. Hidden states arrive
already pooled over completion tokens: one ``[B, d]`` tensor per site for the policy (in the
autograd graph) and the reference (cached, no gradient). Per-site terms are averaged over
sites. Notation used in every docstring, per site and row::

    Δπ = π_cho − π_rej            policy separation            [B, d]
    Δr = ref_cho − ref_rej        reference separation         [B, d]
    û  = Δr / ‖Δr‖                reference preference direction
    p  = ⟨Δπ, û⟩                  signed policy separation along û          [B]
    Δπ⊥ = Δπ − p û                policy separation orthogonal to û         [B, d]
    ρ  = (log π_cho − log π_rej) − (log ref_cho − log ref_rej)   output DPO logit [B]

Norms are smoothed, ``‖x‖_ε = sqrt(‖x‖² + ε²)``, so that every loss has a finite gradient at
policy == reference, where raw norms and cosines of zero vectors are 0/0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError

Tensor = torch.Tensor


@dataclass(frozen=True)
class ReprInputs:
    """Pooled states per site (``{site: [B, d]}``) and, for losses with an output term,
    summed (or mean) completion log-probs ``[B]`` of policy and reference."""

    pi_cho: Mapping[str, Tensor]
    pi_rej: Mapping[str, Tensor]
    ref_cho: Mapping[str, Tensor]
    ref_rej: Mapping[str, Tensor]
    logp_pi_cho: Tensor | None = None
    logp_pi_rej: Tensor | None = None
    logp_ref_cho: Tensor | None = None
    logp_ref_rej: Tensor | None = None

    def __post_init__(self) -> None:
        keys = list(self.pi_cho)
        if not keys:
            raise ConfigError("no hidden states given; pass at least one site")
        for name in ("pi_rej", "ref_cho", "ref_rej"):
            if list(getattr(self, name)) != keys:
                raise ConfigError(f"{name} has sites {list(getattr(self, name))}, "
                                  f"expected {keys}")
        for k in keys:
            shapes = {tuple(getattr(self, n)[k].shape)
                      for n in ("pi_cho", "pi_rej", "ref_cho", "ref_rej")}
            if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                raise ConfigError(f"site {k!r}: states must all be [B, d], got {shapes}")

    @property
    def sites(self) -> list[str]:
        return list(self.pi_cho)

    def rho(self) -> Tensor:
        """Output DPO logit ρ ``[B]``; raises when log-probs were not given."""
        parts = (self.logp_pi_cho, self.logp_pi_rej, self.logp_ref_cho, self.logp_ref_rej)
        if any(p is None for p in parts):
            raise ConfigError("this loss needs policy and reference log-probs of chosen and "
                              "rejected completions")
        pc, pr, rc, rr = parts
        return (pc - pr) - (rc - rr)


@dataclass
class ReprLoss:
    """``loss`` is the scalar to minimise (mean over rows); ``rows`` the per-row loss ``[B]``;
    ``metrics`` detached scalars for the training log."""

    loss: Tensor
    rows: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def finish(rows: Tensor, **metrics: Tensor) -> ReprLoss:
    """Package per-row losses and metric tensors (averaged, detached, as floats)."""
    return ReprLoss(loss=rows.mean(), rows=rows,
                    metrics={k: float(v.detach().float().mean()) for k, v in metrics.items()})


def snorm(x: Tensor, eps: float, dim: int = -1) -> Tensor:
    """Smoothed Euclidean norm ``sqrt(‖x‖² + eps²)`` (finite gradient at 0)."""
    return (x.pow(2).sum(dim) + eps * eps).sqrt()


def unit(x: Tensor, eps: float) -> Tensor:
    """``x / ‖x‖_ε`` along the last axis."""
    return x / snorm(x, eps).unsqueeze(-1)


def scos(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Smoothed cosine ``⟨a, b⟩ / (‖a‖_ε ‖b‖_ε)`` ``[B]``; 0 (not NaN) when either is 0."""
    return (a * b).sum(-1) / (snorm(a, eps) * snorm(b, eps))


@dataclass(frozen=True)
class Geometry:
    """Per-site quantities of the notation above (all rows ``[B]`` or ``[B, d]``)."""

    d_pi: Tensor
    d_ref: Tensor
    u: Tensor
    p: Tensor
    ref_mag: Tensor
    orth: Tensor

    def orth_norm(self, eps: float) -> Tensor:
        """``‖Δπ⊥‖_ε`` ``[B]``."""
        return snorm(self.orth, eps)

    @classmethod
    def of(cls, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, eps: float) -> Geometry:
        d_pi = pc - pr
        d_ref = (rc - rr).detach()
        u = unit(d_ref, eps)
        p = (d_pi * u).sum(-1)
        return cls(d_pi=d_pi, d_ref=d_ref, u=u, p=p, ref_mag=snorm(d_ref, eps),
                   orth=d_pi - p.unsqueeze(-1) * u)


def over_sites(x: ReprInputs, per_site: Callable[..., dict[str, Tensor]],
               **kwargs) -> dict[str, Tensor]:
    """Apply ``per_site(pc, pr, rc, rr, **kwargs) -> {name: [B]}`` at every site; mean over
    sites of each returned term."""
    acc: dict[str, list[Tensor]] = {}
    for k in x.sites:
        out = per_site(x.pi_cho[k], x.pi_rej[k], x.ref_cho[k].detach(), x.ref_rej[k].detach(),
                       **kwargs)
        for name, v in out.items():
            acc.setdefault(name, []).append(v)
    return {name: torch.stack(vs, 0).mean(0) for name, vs in acc.items()}


def dpo_shaped(logit: Tensor, beta: float, kind: str) -> Tensor:
    """The DPO family's per-row loss of a logit ``[B]``.

    ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7): ``−log σ(β·logit)``, bounded below by 0.
    ``ipo`` (Azar et al. 2023, eq. 17): ``(logit − 1/(2β))²``, bounded below by 0.
    """
    if kind == "sigmoid":
        return -F.logsigmoid(beta * logit)
    if kind == "ipo":
        return (logit - 1.0 / (2.0 * beta)) ** 2
    raise ConfigError(f"unknown DPO-shaped loss {kind!r}; use sigmoid or ipo")


def check_options(opts: object) -> None:
    """Shared validation: every weight named alpha*/beta* must be a finite number >= 0
    (beta > 0)."""
    for f in dataclasses.fields(opts):  # type: ignore[arg-type]
        v = getattr(opts, f.name)
        if v is None:  # an option left to its automatic default
            continue
        if f.name.startswith("alpha") and (not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"{f.name} must be >= 0 (got {v}); it weighs a term of the loss")
        if f.name.startswith("beta") and (not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{f.name} must be > 0 (got {v})")
        if f.name == "eps" and not v > 0:
            raise ConfigError(f"eps must be > 0 (got {v})")
