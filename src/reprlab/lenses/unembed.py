"""Decode hidden states through a model's own final norm and unembedding, and read the
residual stream at every depth in one forward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from reprlab import hooks
from reprlab.errors import ModelError
from reprlab.sites import Site, parse_sites

if TYPE_CHECKING:
    from reprlab.models import LoadedModel


def decoder_parts(lm: LoadedModel) -> tuple[nn.Module | None, nn.Module]:
    """``(final_norm or None, unembedding)`` of a causal LM, found by :func:`models.discover`."""
    arch = lm.arch
    if not lm.is_causal or not arch.unembed_path:
        raise ModelError(f"{lm.name} has no unembedding (is it a causal LM?); lenses need a "
                         "model that predicts tokens, e.g. a *ForCausalLM checkpoint")
    norm = lm.model.get_submodule(arch.final_norm_path) if arch.final_norm_path else None
    return norm, lm.model.get_submodule(arch.unembed_path)


def unembed(lm: LoadedModel, h: torch.Tensor) -> torch.Tensor:
    """Logits of hidden states ``h [..., d]``: the model's final norm, then its unembedding."""
    norm, head = decoder_parts(lm)
    return head(norm(h) if norm is not None else h)


def residual_sites(lm: LoadedModel) -> list[Site]:
    """``embed, layers.0 .. layers.{n-1}``: the residual stream before and after every block."""
    return parse_sites(["embed", "layers.*"], lm.arch)


def layer_names(lm: LoadedModel) -> list[str]:
    return [s.name for s in residual_sites(lm)]


def forward_states(lm: LoadedModel, inputs: dict, grad: bool = False
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward: residual states at every :func:`residual_sites` entry ``[B, T, d]`` each,
    and the model's logits ``[B, T, V]``."""
    sites = residual_sites(lm)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, hooks.record(lm, sites, detach=not grad) as cache:
        out = lm.model(**inputs)
    return [cache[s.name] for s in sites], out.logits
