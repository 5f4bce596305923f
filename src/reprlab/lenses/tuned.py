"""The tuned lens: one residual affine translator per layer, ``h + W h + b``, fitted so each
layer's decoding matches the model's final output (Belrose et al. 2023).

``W`` and ``b`` start at zero, so an untrained tuned lens is the logit lens exactly. The last
layer keeps the identity: its logit-lens reading already is the model's output.
"""

from __future__ import annotations

import torch
from torch import nn

from reprlab.lenses.base import register
from reprlab.lenses.logit import LogitLens, model_summary
from reprlab.lenses.unembed import layer_names
from reprlab.models import LoadedModel


def translate(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Residual translator: ``h [..., d] -> h + h Wᵀ + b`` with ``W [d, d]``, ``b [d]``."""
    return h + h @ weight.T + bias


class Translators(nn.Module):
    """Trainable translators for every layer but the last: ``weight [L-1, d, d]``, ``bias``."""

    def __init__(self, n_layers: int, d: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers - 1, d, d, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(n_layers - 1, d, dtype=dtype))

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if layer >= self.weight.shape[0]:
            return h
        return translate(h, self.weight[layer].to(h.dtype), self.bias[layer].to(h.dtype))


@register
class TunedLens(LogitLens):
    """A fitted tuned lens. ``weight [L-1, d, d]`` and ``bias [L-1, d]`` in ``tensors``."""

    kind = "tuned"

    @classmethod
    def fit(cls, lm: LoadedModel, texts: list[str] | None = None, cfg=None,
            **kwargs) -> TunedLens:
        """Train translators on ``texts`` (see :func:`tuned_train.train_tuned`)."""
        import importlib

        if texts is None:
            raise TypeError("TunedLens.fit(lm, texts, cfg) needs texts to train on")
        # the trainer builds on this module, so it is looked up by name when fitting
        trainer = importlib.import_module("reprlab.lenses.tuned_train")
        return trainer.train_tuned(lm, texts, cfg, **kwargs)[0]

    @classmethod
    def identity(cls, lm: LoadedModel) -> TunedLens:
        """The untrained lens (zero translators): equal to the logit lens."""
        names = layer_names(lm)
        t = Translators(len(names), lm.arch.hidden_size)
        return cls.from_translators(lm, t, {})

    @classmethod
    def from_translators(cls, lm: LoadedModel, t: Translators, train: dict) -> TunedLens:
        return cls({"weight": t.weight.detach(), "bias": t.bias.detach()},
                   {"model": model_summary(lm), "layers": layer_names(lm), "train": train})

    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        w, b = self.tensors["weight"], self.tensors["bias"]
        if layer >= w.shape[0]:
            return h
        return translate(h, w[layer].to(h), b[layer].to(h))

    def translators(self) -> Translators:
        """A trainable copy (to continue training)."""
        w = self.tensors["weight"]
        t = Translators(w.shape[0] + 1, w.shape[-1])
        with torch.no_grad():
            t.weight.copy_(w)
            t.bias.copy_(self.tensors["bias"])
        return t
