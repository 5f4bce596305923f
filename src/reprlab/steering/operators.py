"""Steering operators (pure functions on hidden states) and the context manager that applies them.

Operators act on ``h [B, T, d]`` with a unit direction ``u [d]`` and a token mask
``m [B, T]`` (1 where the edit applies):

- ``add``: ``h + c * s * u`` (``s`` = 1 for ``unit`` scaling, the raw mean-difference norm for
  ``raw``) — ActAdd (Turner et al. 2023), CAA (Rimsky et al. 2024), repeng.
- ``ablate``: ``h - (h.u) u`` — the component along ``u`` removed (directional ablation).
- ``set``: ``h + (c * s - h.u) u`` — the projection set to a value.

``preserve_norm`` rescales each edited token back to its original length. :func:`steer`
attaches the operators at several sites through :func:`reprlab.hooks.edit`; the model is restored
exactly when the block exits, also on exception.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from reprlab.errors import ConfigError
from reprlab.hooks import edit
from reprlab.sites import resolve_sites

if TYPE_CHECKING:
    from reprlab.models import LoadedModel


class VectorLike(Protocol):
    """What steering needs of a vector (:class:`reprlab.steering.SteeringVector` has it)."""

    sites: list[str]
    scales: Mapping[str, float]

    def direction(self, site: str) -> torch.Tensor: ...

    def check_model(self, lm: LoadedModel, strict: bool = ...) -> None: ...


def _is_vector(obj: Any) -> bool:
    return callable(getattr(obj, "direction", None)) and hasattr(obj, "scales")

Operator = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def op_add(h: torch.Tensor, u: torch.Tensor, value: float) -> torch.Tensor:
    """``h [..., d] + value * u [d]``."""
    return h + value * u


def op_ablate(h: torch.Tensor, u: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Remove the component of ``h [..., d]`` along unit ``u [d]`` (``value`` unused)."""
    return h - (h @ u).unsqueeze(-1) * u


def op_set(h: torch.Tensor, u: torch.Tensor, value: float) -> torch.Tensor:
    """Set the projection of ``h [..., d]`` on unit ``u [d]`` to ``value``."""
    return h + (value - h @ u).unsqueeze(-1) * u


OPERATORS: dict[str, Operator] = {"add": op_add, "ablate": op_ablate, "set": op_set}
UNITS = ("unit", "raw")


def apply_operator(h: torch.Tensor, u: torch.Tensor, value: float, op: str = "add",
                   mask: torch.Tensor | None = None, preserve_norm: bool = False) -> torch.Tensor:
    """Edit ``h [B, T, d]`` along unit ``u [d]``; tokens where ``mask [B, T]`` is 0 are kept."""
    u = u.to(device=h.device, dtype=h.dtype)
    new = OPERATORS[op](h, u, value)
    if preserve_norm:
        old_norm = h.norm(dim=-1, keepdim=True)
        new = new * (old_norm / new.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    if mask is not None:
        new = torch.where(mask.to(torch.bool).unsqueeze(-1), new, h)
    return new


# -- scopes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """Which tokens an edit touches: ``all``, ``from:N`` (N-th non-padding token on) or
    ``generated`` (only tokens produced after the prompt during generation)."""

    kind: str = "all"
    start: int = 0

    @classmethod
    def parse(cls, spec: str | int | Scope | None) -> Scope:
        if isinstance(spec, Scope):
            return spec
        if spec is None or str(spec).strip() in ("", "all"):
            return cls("all")
        text = str(spec).strip()
        if text in ("generated", "new"):
            return cls("generated")
        m = re.fullmatch(r"(?:from:)?(-?\d+)", text)
        if m and int(m.group(1)) >= 0:
            return cls("from", int(m.group(1)))
        raise ConfigError(f"unknown steering scope {spec!r}; use all, generated or from:N "
                          "(N >= 0, the first steered token)")


class _Positions:
    """Tracks where the current forward's tokens sit (cache offset, padding) via a root hook."""

    def __init__(self) -> None:
        self.offset = 0
        self.mask: torch.Tensor | None = None
        self.prompt_len: int | None = None

    def pre_hook(self, _mod: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        t = (ids if ids is not None else embeds).shape[1]
        # the KV cache argument is ``past_key_values`` up to transformers 5.23, ``cache`` after
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        offset = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        self.offset = offset
        self.mask = kwargs.get("attention_mask")
        if offset == 0:
            self.prompt_len = t

    def token_mask(self, scope: Scope, h: torch.Tensor) -> torch.Tensor | None:
        if scope.kind == "all":
            return None
        b, t = h.shape[:2]
        pos = torch.arange(self.offset, self.offset + t, device=h.device).expand(b, t)
        if scope.kind == "generated":
            return pos >= (self.prompt_len if self.prompt_len is not None else 0)
        mask = self.mask
        if mask is None or mask.ndim != 2 or mask.shape[1] < self.offset + t:
            return pos >= scope.start
        mask = mask.to(h.device)
        rank = mask.long().cumsum(1) - 1
        rank = rank[:, self.offset:self.offset + t]
        return (rank >= scope.start) & (mask[:, self.offset:self.offset + t] == 1)


def _directions(vector: Any, sites: list[str] | None) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, float]]:
    """``(unit directions, raw scales)`` from a SteeringVector or a dict of tensors."""
    if _is_vector(vector):
        names = sites or vector.sites
        return ({s: vector.direction(s) for s in names}, {s: vector.scales[s] for s in names})
    if isinstance(vector, Mapping):
        names = sites or list(vector)
        out, scales = {}, {}
        for s in names:
            if s not in vector:
                from reprlab.errors import SiteError

                raise SiteError(f"no direction given for site {s!r}; have {list(vector)}")
            v = torch.as_tensor(vector[s]).detach()
            scales[s] = float(v.double().norm())
            out[s] = v / v.norm()
        return out, scales
    raise ConfigError(f"cannot steer with a {type(vector).__name__}; pass a SteeringVector or "
                      "a dict site -> tensor")


@contextlib.contextmanager
def steer(lm: LoadedModel, vector: VectorLike | Mapping[str, torch.Tensor],
          coeff: float | Mapping[str, float] = 1.0, *, sites: list[str] | str | None = None,
          op: str = "add", unit: str = "unit", scope: str | Scope = "all",
          preserve_norm: bool = False, check: bool = True) -> Iterator[None]:
    """Steer ``lm`` at ``sites`` (default: every site of ``vector``) inside the ``with`` block.

    ``coeff`` is one number or ``{site: number}``. ``unit="raw"`` multiplies by the raw
    mean-difference norm. On exit (normal or exception) every hook is removed, so the model's
    outputs are bitwise what they were before.
    """
    if op not in OPERATORS:
        raise ConfigError(f"unknown steering operator {op!r}; use one of {', '.join(OPERATORS)}")
    if unit not in UNITS:
        raise ConfigError(f"unknown unit {unit!r}; use unit or raw")
    sc = Scope.parse(scope)
    names: list[str] | None = None
    if sites is not None:
        names = [s.name for s in resolve_sites(lm, sites)]
    if _is_vector(vector) and check and hasattr(vector, "check_model"):
        vector.check_model(lm, strict=False)
    dirs, scales = _directions(vector, names)
    d = lm.arch.hidden_size
    for s, u in dirs.items():
        if u.shape[-1] != d:
            from reprlab.errors import ModelError

            raise ModelError(f"direction for {s} has size {u.shape[-1]} but {lm.name} has "
                             f"hidden size {d}; use a vector fitted on this model")
    coeffs = {s: _coeff(coeff, s) for s in dirs}
    tracker = _Positions()
    cached: dict[str, torch.Tensor] = {}

    def make(site: str) -> Callable[[torch.Tensor], torch.Tensor]:
        value = coeffs[site] * (scales[site] if unit == "raw" else 1.0)

        def fn(h: torch.Tensor) -> torch.Tensor:
            key = f"{site}|{h.device}|{h.dtype}"
            if key not in cached:
                cached[key] = dirs[site].to(device=h.device, dtype=h.dtype)
            return apply_operator(h, cached[key], value, op, tracker.token_mask(sc, h),
                                  preserve_norm)
        return fn

    handle = None
    try:
        if sc.kind != "all":
            handle = lm.model.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True)
        with edit(lm, {s: make(s) for s in dirs}):
            yield
    finally:
        if handle is not None:
            handle.remove()


def _coeff(coeff: float | Mapping[str, float], site: str) -> float:
    if isinstance(coeff, Mapping):
        if site not in coeff:
            raise ConfigError(f"no coefficient given for site {site!r}")
        value = coeff[site]
    else:
        value = coeff
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"coefficient {value!r} is not a number") from None
    if not math.isfinite(out):
        raise ConfigError(f"coefficient {value!r} is not finite")
    return out


# -- coefficient lists ------------------------------------------------------------------------
def parse_coeffs(spec: str | float | list | tuple) -> list[float]:
    """``"-8:8:9"`` -> linspace(-8, 8, 9); ``"-4,0,4"`` -> [-4, 0, 4]; numbers pass through."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return [float(spec)]
    if isinstance(spec, (list, tuple)):
        if len(spec) == 1 and isinstance(spec[0], str):
            return parse_coeffs(spec[0])
        return [c for s in spec for c in parse_coeffs(s)]
    text = str(spec).strip()
    bad = (f"coefficients {spec!r} are not numbers; use a list like -4,0,4 or "
           "start:stop:count like -8:8:9")
    if not text:
        raise ConfigError(bad)
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(bad)
        try:
            lo, hi = float(parts[0]), float(parts[1])
            n = int(parts[2])
        except ValueError:
            raise ConfigError(bad) from None
        if n < 1 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(bad)
        return [float(v) for v in torch.linspace(lo, hi, n, dtype=torch.float64).tolist()]
    out = []
    for item in text.split(","):
        try:
            v = float(item.strip())
        except ValueError:
            raise ConfigError(bad) from None
        if not math.isfinite(v):
            raise ConfigError(bad)
        out.append(v)
    return out
