"""The tuned lens: one residual affine translator per layer, ``h + W h + b``, fitted so each
layer's decoding matches the model's final output (Belrose et al. 2023).

``W`` and ``b`` start at zero, so an untrained tuned lens is the logit lens exactly. The last
layer keeps the identity: its logit-lens reading already is the model's output.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from reprlab.lenses.base import register
from reprlab.lenses.logit import LogitLens, model_summary
from reprlab.lenses.tuned.train import fit_translators
from reprlab.lenses.tuned.translators import Translators, translate
from reprlab.lenses.unembed import layer_names
from reprlab.models import LoadedModel


@register
class TunedLens(LogitLens):
    """A fitted tuned lens. ``weight [L-1, d, d]`` and ``bias [L-1, d]`` in ``tensors``."""

    kind = "tuned"

    @classmethod
    def fit(cls, lm: LoadedModel, texts: list[str] | None = None, cfg=None,
            **kwargs) -> TunedLens:
        """Train translators on ``texts`` (see :func:`reprlab.lenses.tuned.train.fit_translators`)."""
        if texts is None:
            raise TypeError("TunedLens.fit(lm, texts, cfg) needs texts to train on")
        translators, history, cfg = fit_translators(lm, texts, cfg, **kwargs)
        return cls.from_translators(lm, translators, {**asdict(cfg),
                                                       "history_len": len(history)})

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
