"""Probe directions per layer, compared with the difference of class means.

All directions live in the raw activation space (standardisation undone) and are unit
vectors. For ``K > 2`` classes there is one direction per class (one-vs-rest) and cosines are
averaged over classes.
"""

from __future__ import annotations

import torch

from reprlab.probes.massmean import contrast_directions


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def raw_directions(weight_std: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Weights acting on standardised inputs ``[L, K', d]`` -> unit raw directions.

    For softmax probes (``K' = K``) each class's weight is centred over classes first, so the
    direction is that of the class's logit relative to the others."""
    w = weight_std
    if w.shape[-2] > 1:
        w = w - w.mean(-2, keepdim=True)
    return unit(w / std[:, None, :])


def mean_difference(X_raw: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Unit mean-difference directions ``[L, K', d]`` from raw ``X [L, n, d]``, ``y [n]``."""
    return unit(contrast_directions(X_raw, y.unsqueeze(0), n_classes)[:, 0])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over classes of the cosine between unit directions ``[..., K', d]`` -> ``[...]``."""
    return (unit(a) * unit(b)).sum(-1).mean(-1)


def neighbour_cosines(dirs: torch.Tensor) -> torch.Tensor:
    """Cosine of each layer's direction with the next layer's: ``[L, K', d]`` -> ``[L - 1]``."""
    if dirs.shape[0] < 2:
        return dirs.new_zeros(0)
    return cosine(dirs[:-1], dirs[1:])
