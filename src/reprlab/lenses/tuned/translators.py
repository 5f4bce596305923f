"""The tuned lens's trainable part: one residual affine translator per layer."""

from __future__ import annotations

import torch
from torch import nn


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
