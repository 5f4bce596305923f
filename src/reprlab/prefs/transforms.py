"""Transforms of pooled hidden states, applied before a representation loss, trained with it.

A representation loss compares policy and reference states; a transform ``T`` first maps both
(``T(π)``, ``T(ref)``), so the loss can act in a learned basis. Every transform here maps
``{site: [B, d]}`` to ``{site: [B, d]}``; the per-site ones are linear, so applying them to
completion-mean-pooled states equals pooling transformed token states.

=============  ==========================================================  ==================
name           map (per site, ``x`` a row)                                 identity at init
=============  ==========================================================  ==================
``none``       ``x``                                                       yes
``ether``      block-diagonal reflections ``H_b = I − 2 û_b û_bᵀ`` (ETHER,   no (a reflection)
               Bini et al. 2024, arXiv:2405.20271)
``etherplus``  ``H_b = I − û_b û_bᵀ + v̂_b v̂_bᵀ`` (ETHER+, same paper)         yes (v = u)
``hra``        product of ``r`` Householder reflections (HRA, Yuan et al.   yes (paired init)
               2024, arXiv:2405.17484)
``ortho``      a full orthogonal matrix (``torch.nn.utils.parametrizations  yes
               .orthogonal``)
``supressed``  keep the coordinates whose change since the previous site,   —  (no parameters)
               seen through the unembedding, is positive (SupressedHS)
=============  ==========================================================  ==================

The orthogonal ones (``ether``, ``hra``, ``ortho``) are applied to policy and reference alike,
so a loss that reads only inner products and norms — every InnerDPO align method, MSE,
PrefVec — has the same value with them as without, and gives them no gradient (only rounding
noise, which Adam turns into random steps). They act on coordinate-wise losses (Rank's
log-softmax, TopK's dimension choice) and on ETHER+, which is not orthogonal. The research
combined them with the invariant losses.

PEFT (0.21) has no ETHER, so it is written here. The SupressedHS idea and the ETHER/HRA
variants follow the ReprPO research (wassname/repr-preference-optimization,
``reprpo/interventions/transforms/``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from reprlab.errors import ConfigError

Tensor = torch.Tensor


def _key(site: str) -> str:
    return site.replace(".", "__")


class Identity(nn.Module):
    """``x -> x``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


class ETHER(nn.Module):
    """Block-diagonal reflections (``plus=False``) or ETHER+ (``plus=True``) on ``[..., d]``.

    ``d`` is split into ``n_blocks`` blocks of ``d / n_blocks``; block ``b`` is mapped by
    ``H_b = I − 2 û_b û_bᵀ`` (orthogonal, ``H_b² = I``, ``det H_b = −1``) or, for ETHER+,
    ``I − û_b û_bᵀ + v̂_b v̂_bᵀ`` (not orthogonal in general; the identity while v = u).
    """

    def __init__(self, dim: int, n_blocks: int = 4, plus: bool = False, seed: int = 0) -> None:
        super().__init__()
        if n_blocks < 1 or dim % n_blocks:
            raise ConfigError(f"ETHER needs a block count that divides the width {dim}; "
                              f"got n_blocks={n_blocks}")
        self.dim, self.n_blocks, self.plus = dim, n_blocks, plus
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(n_blocks, dim // n_blocks, generator=g)
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(u.clone()) if plus else None

    def forward(self, x: Tensor) -> Tensor:
        xb = x.reshape(*x.shape[:-1], self.n_blocks, self.dim // self.n_blocks)
        u = self.u / self.u.norm(dim=-1, keepdim=True)
        along_u = (xb * u).sum(-1, keepdim=True) * u
        if self.v is None:
            out = xb - 2.0 * along_u
        else:
            v = self.v / self.v.norm(dim=-1, keepdim=True)
            out = xb - along_u + (xb * v).sum(-1, keepdim=True) * v
        return out.reshape(x.shape)


class HRA(nn.Module):
    """``H = Π_k (I − 2 û_k û_kᵀ)``, ``r`` Householder reflections of ``[..., d]``.

    Orthogonal for any parameters. Initialised in equal adjacent pairs (``u_{2j} = u_{2j+1}``,
    so each pair cancels and ``H = I``), as the HRA paper does; ``r`` must be even.
    """

    def __init__(self, dim: int, r: int = 8, seed: int = 0) -> None:
        super().__init__()
        if r < 2 or r % 2:
            raise ConfigError(f"HRA needs an even number of reflections r >= 2, got {r}")
        g = torch.Generator().manual_seed(seed)
        half = torch.randn(r // 2, dim, generator=g)
        self.dim = dim
        self.u = nn.Parameter(half.repeat_interleave(2, dim=0))

    def forward(self, x: Tensor) -> Tensor:
        u = self.u / self.u.norm(dim=-1, keepdim=True)
        for k in range(u.shape[0]):
            x = x - 2.0 * (x @ u[k]).unsqueeze(-1) * u[k]
        return x


class Orthogonal(nn.Module):
    """A full ``d × d`` orthogonal map (torch's orthogonal parametrization), the identity at
    init; ``x -> x Wᵀ``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        self.dim = dim
        self.linear = orthogonal(nn.Linear(dim, dim, bias=False))
        with torch.no_grad():
            self.linear.weight = torch.eye(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class PerSite(nn.Module):
    """One module per site; checks each input's width against the one it was built for."""

    def __init__(self, widths: Mapping[str, int], make: Callable[[int, int], nn.Module]):
        super().__init__()
        self.widths = dict(widths)
        self.maps = nn.ModuleDict({_key(s): make(w, i) for i, (s, w) in enumerate(widths.items())})

    def forward(self, states: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for s, x in states.items():
            if s not in self.widths:
                raise ConfigError(f"the transform has no map for site {s!r}; it was built for "
                                  f"{', '.join(self.widths)}")
            if x.shape[-1] != self.widths[s]:
                raise ConfigError(f"the transform for {s} has width {self.widths[s]} but the "
                                  f"model's states there have width {x.shape[-1]}; rebuild it "
                                  "for this model")
            out[s] = self.maps[_key(s)](x)
        return out


class SupressedHS(nn.Module):
    """Keep, at each site after the first, the coordinates whose change since the previous
    site is positive once seen through the unembedding ``W [V, d]``.

    ``δ = P (h_l − h_{l−1})`` with ``P = W⁺ W`` (projector onto the row space of ``W``);
    output ``h_l ⊙ [δ > eps]`` for sites ``2..L`` (the first site only serves as the base).
    The mask is not differentiated. For a full-rank unembedding with ``V ≥ d``, ``P = I`` and
    the mask is simply "the state rose since the previous site"; without ``unembed`` that
    ``P = I`` is used. ``eps`` is in hidden-state units; the research used 0.1, which on a
    small model's states can mask everything, so the default is 0. (The research computed the mask on the last token and applied it to all
    tokens; here it acts on pooled states.)
    """

    def __init__(self, widths: Mapping[str, int], unembed: Tensor | None = None,
                 eps: float = 0.0) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ConfigError("the supressed transform compares consecutive sites; give at "
                              "least two sites (e.g. layers.0.5:-1 on a deep enough model)")
        d = unembed.shape[-1] if unembed is not None else next(iter(widths.values()))
        bad = {s: w for s, w in widths.items() if w != d}
        if bad:
            raise ConfigError(f"the supressed transform needs residual-stream sites of width {d}"
                              f"; {', '.join(f'{s} ({w})' for s, w in bad.items())} differ")
        self.order = list(widths)
        self.eps = eps
        if unembed is None:  # P = I: exact for a full-rank unembedding with V >= d
            proj = torch.eye(d)
        else:
            w = unembed.detach().float()
            proj = torch.linalg.pinv(w) @ w
        self.register_buffer("proj", proj, persistent=False)

    def forward(self, states: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = [s for s in self.order if s not in states]
        if missing:
            raise ConfigError(f"the supressed transform needs states at {', '.join(missing)}")
        out = {}
        for prev, cur in zip(self.order, self.order[1:]):
            with torch.no_grad():
                delta = (states[cur] - states[prev]).float() @ self.proj.T
                mask = (delta > self.eps).to(states[cur].dtype)
            out[cur] = states[cur] * mask
        return out


class NoTransform(nn.Module):
    """The ``none`` transform over a dict of states."""

    def forward(self, states: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(states)


def _per_site(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(widths: Mapping[str, int], unembed: Tensor | None = None, **opts) -> nn.Module:
        return PerSite(widths, lambda w, i: factory(w, seed=i, **opts))
    return build


def _ether(dim, seed, n_blocks=4):
    return ETHER(dim, n_blocks=n_blocks, seed=seed)


def _etherplus(dim, seed, n_blocks=4):
    return ETHER(dim, n_blocks=n_blocks, plus=True, seed=seed)


def _hra(dim, seed, r=8):
    return HRA(dim, r=r, seed=seed)


def _ortho(dim, seed):
    return Orthogonal(dim)


def _supressed(widths, unembed=None, eps=0.0):
    return SupressedHS(widths, unembed, eps=eps)


#: name -> builder(widths {site: d}, unembed [V, d] | None, **options) -> nn.Module
TRANSFORMS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda widths, unembed=None: NoTransform(),
    "ether": _per_site(_ether),
    "etherplus": _per_site(_etherplus),
    "hra": _per_site(_hra),
    "ortho": _per_site(_ortho),
    "supressed": _supressed,
}


def build_transform(name: str, widths: Mapping[str, int], unembed: Tensor | None = None,
                    **options) -> nn.Module:
    """The transform ``name`` for sites of the given widths; one clear error otherwise."""
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"orthogonal": "ortho", "suppressed": "supressed", "supressedhs": "supressed",
               "ether+": "etherplus", "identity": "none"}
    key = aliases.get(key, key)
    if key not in TRANSFORMS:
        raise ConfigError(f"unknown transform {name!r}; use one of {', '.join(TRANSFORMS)}")
    try:
        return TRANSFORMS[key](widths, unembed=unembed, **options)
    except TypeError as exc:
        raise ConfigError(f"bad option for the {key} transform: {exc}") from None
