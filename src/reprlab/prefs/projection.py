"""Gradient projection along the preference direction: ProjGrad and ProjBP.

Both train with an ordinary preference loss (DPO) but reshape its gradient so that the update
moves each adapted module's output along the **preference direction** of that output,
``u = mean(out_cho) − mean(out_rej)`` (completion-pooled, normalised), and little elsewhere.
Source: ``dpo_projgrad.py`` / ``dpo_projbp.py`` of wassname/repr-preference-optimization.

For a gradient vector ``g`` in the module's output space (a column of an adapter weight's
gradient, or one token's activation gradient) the update is ``−g``; write
``m = ⟨−g, û⟩`` for how far the update moves the output along û. Then::

    m'  = leaky_relu(m, slope)           moving toward the chosen side is kept whole,
                                         moving against it scaled by ``slope``
    m'  = clamp(m', −c, c)               optional magnitude clip, c = mag_clip · ‖u‖
    g'  = −m' û + β · (g − ⟨g, û⟩ û)     β scales the part orthogonal to û

With ``β = 1``, ``slope = 1`` and no clip, ``g' = g``.

* **ProjGrad** applies this after ``backward()`` to every adapter parameter gradient along
  the axis that indexes the module's output (dim 0 of ``lora_B`` ``[out, r]``, of a bias or a
  DoRA magnitude ``[out]``); parameters with no output axis (``lora_A``) are left alone.
  One direction per module for the batch (parameter gradients sum over rows).
* **ProjBP** applies it in a backward pre-hook to the gradient of each module's output
  activation ``[N, T, d]``, with one direction per preference pair, then rescales the
  tensor to its original norm; earlier layers then see the projected gradient.

Deviations from the research code: it applied the leaky-ReLU element-wise to the projected
*vector* (whose coordinates' signs are those of û, not of the movement) and needed
``reverse_pref=True`` to make "keep" mean "toward chosen"; here the leaky-ReLU acts on the
scalar movement ``m`` of the update. The direction comes from whichever forward runs inside
:meth:`Projector.observe` — the policy's own detached outputs (the research's
``use_pref_ref=False``) or a reference forward with the adapter disabled.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError
from reprlab.hooks import get_hidden
from reprlab.prefs.hidden import pool_completion

logger = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass(frozen=True)
class ProjectionOptions:
    beta: float = 0.5
    """weight of the gradient part orthogonal to the preference direction"""
    slope: float = 0.0
    """leaky-ReLU slope for updates moving against the preference direction (0 = drop)"""
    mag_clip: float | None = None
    """clip the movement along û to mag_clip × ‖u‖ (None = no clip)"""

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0 (got {self.beta})")
        if not 0.0 <= self.slope <= 1.0:
            raise ConfigError(f"slope must lie in [0, 1] (got {self.slope})")
        if self.mag_clip is not None and self.mag_clip <= 0:
            raise ConfigError(f"mag_clip must be > 0 or None (got {self.mag_clip})")


def project(g: Tensor, u: Tensor, opts: ProjectionOptions, dim: int = -1,
            u_norm: Tensor | None = None) -> Tensor:
    """Reshape gradient ``g`` along axis ``dim`` (size d) against direction ``u``.

    ``u`` is ``[d]`` or broadcastable to ``g`` with ``d`` on axis ``dim``; it is normalised
    here. ``u_norm`` (same broadcast, without the ``d`` axis) is ‖u‖ for the magnitude clip.
    Formula in the module docstring.
    """
    dim = dim % g.dim()
    if u.dim() == 1:
        shape = [1] * g.dim()
        shape[dim] = -1
        u = u.reshape(shape)
    norm = u.norm(dim=dim, keepdim=True)
    uh = u / norm.clamp(min=1e-12)
    c = (g * uh).sum(dim, keepdim=True)
    m = F.leaky_relu(-c, opts.slope)
    if opts.mag_clip is not None:
        cap = opts.mag_clip * (norm if u_norm is None else u_norm)
        m = torch.maximum(torch.minimum(m, cap), -cap)
    return -m * uh + opts.beta * (g - c * uh)


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT tuner layers with trainable parameters (the modules ProjGrad/ProjBP act on)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a training dependency
        raise ConfigError("gradient projection needs peft; pip install 'reprlab[train]'") from None
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, BaseTunerLayer) and any(p.requires_grad for p in mod.parameters()):
            out[name] = mod
    if not out:
        raise ConfigError("no trainable adapter layers found for gradient projection; train "
                          "with a PEFT adapter (e.g. LoRA)")
    return out


class Projector:
    """Shared machinery: records each module's completion-pooled output direction."""

    def __init__(self, modules: Mapping[str, nn.Module], opts: ProjectionOptions,
                 pool: str = "mean") -> None:
        if not modules:
            raise ConfigError("gradient projection needs at least one module")
        if pool not in ("mean", "sum"):
            raise ConfigError(f"unknown pooling {pool!r}; use mean or sum")
        self.modules = dict(modules)
        self.opts = opts
        self.pool = pool
        self.dirs: dict[str, Tensor] = {}
        self._mask: Tensor | None = None
        self._chosen: Tensor | None = None
        self._handles = [m.register_forward_hook(self._make_hook(n))
                         for n, m in self.modules.items()]

    def _make_hook(self, name: str):
        def hook(_mod, _args, output):
            if self._mask is None:
                return None
            with torch.no_grad():
                out = get_hidden(output).detach()
                mask = self._mask.to(out.device)
                if self.pool == "sum":
                    pooled = (out * mask.unsqueeze(-1).to(out.dtype)).sum(1).float()
                else:
                    pooled = pool_completion(out, mask).float()
                ch = self._chosen.to(out.device)
                self.dirs[name] = self._direction(pooled[ch], pooled[~ch])
            return None
        return hook

    def _direction(self, cho: Tensor, rej: Tensor) -> Tensor:
        raise NotImplementedError

    def set_batch(self, mask: Tensor | None, chosen: Tensor | None) -> None:
        """Masks for the forwards that follow (``None`` stops recording); see :meth:`observe`."""
        if mask is not None:
            chosen = chosen.bool()
            if int(chosen.sum()) != int((~chosen).sum()):
                raise ValueError("needs as many chosen rows as rejected rows")
            mask = mask.bool()
        self._mask, self._chosen = mask, chosen

    @contextlib.contextmanager
    def observe(self, mask: Tensor, chosen: Tensor) -> Iterator[None]:
        """Record directions during the forwards in the body.

        ``mask [N, T]``: completion tokens; ``chosen [N]`` bool: chosen rows (the rest are
        rejected, pair ``i`` = ``i``-th chosen row with ``i``-th rejected row).
        """
        self.set_batch(mask, chosen)
        try:
            yield
        finally:
            self.set_batch(None, None)

    def remove(self) -> None:
        """Remove every hook this projector registered."""
        for h in self._handles:
            h.remove()
        self._handles = []


class ProjGrad(Projector):
    """Project adapter parameter gradients after ``backward()``: call :meth:`apply`."""

    def _direction(self, cho: Tensor, rej: Tensor) -> Tensor:
        return (cho - rej).mean(0)  # [d]: one direction for the batch

    def apply(self, strict: bool = True) -> dict[str, float]:
        """Replace each output-side gradient by its projection; returns diagnostics: how many
        parameters were projected / left alone and the mean kept share of the gradient norm.
        ``strict=False`` skips modules whose forward was not observed."""
        done, kept, skipped = 0, [], 0
        for name, mod in self.modules.items():
            u = self.dirs.get(name)
            if u is None:
                if not strict:
                    continue
                raise RuntimeError(f"no preference direction for {name}; run the forward "
                                   "inside ProjGrad.observe(mask, chosen)")
            d = u.shape[0]
            for pname, p in mod.named_parameters():
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.shape[0] != d or "_A." in f"{pname}." or "lora_A" in pname:
                    skipped += 1  # no axis in the module's output space
                    continue
                g = p.grad
                new = project(g.float(), u.to(g.device), self.opts, dim=0).to(g.dtype)
                kept.append(float(new.norm() / g.norm().clamp(min=1e-12)))
                p.grad = new
                done += 1
        self.dirs = {}
        return {"projected": float(done), "left": float(skipped),
                "kept_norm": sum(kept) / len(kept) if kept else 0.0}


class ProjBP(Projector):
    """Project activation gradients in a backward pre-hook of each module."""

    def __init__(self, modules: Mapping[str, nn.Module], opts: ProjectionOptions,
                 pool: str = "mean") -> None:
        super().__init__(modules, opts, pool)
        self._rows: dict[str, Tensor] = {}
        self._handles += [m.register_full_backward_pre_hook(self._make_bwd(n))
                          for n, m in self.modules.items()]

    def _direction(self, cho: Tensor, rej: Tensor) -> Tensor:
        return cho - rej  # [P, d]: one direction per pair

    def _make_hook(self, name: str):
        base = super()._make_hook(name)

        def hook(mod, args, output):
            if self._mask is not None:
                base(mod, args, output)
                # expand pair directions to the rows of this forward, in row order
                ch = self._chosen
                idx = torch.empty(ch.shape[0], dtype=torch.long)
                idx[ch.cpu()] = torch.arange(int(ch.sum()))
                idx[~ch.cpu()] = torch.arange(int((~ch).sum()))
                self._rows[name] = self.dirs[name][idx.to(self.dirs[name].device)]
            return None
        return hook

    def _make_bwd(self, name: str):
        def bwd(_mod, grad_output):
            u = self._rows.get(name)
            if u is None or grad_output[0] is None:
                return None
            g = grad_output[0]
            if g.dim() != 3 or g.shape[0] != u.shape[0]:
                return None
            uu = u.to(g.device, torch.float32).unsqueeze(1)          # [N, 1, d]
            new = project(g.float(), uu, self.opts, dim=-1)
            scale = g.float().norm() / new.norm().clamp(min=1e-12)
            return (((new * scale).to(g.dtype)),) + tuple(grad_output[1:])
        return bwd
