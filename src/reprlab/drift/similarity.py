"""Paired similarity measures for two clouds computed on the *same inputs*.

Row ``i`` of ``x [B, n, d1]`` and row ``i`` of ``y [B, n, d2]`` describe the same input (token
or text), e.g. one layer against another, or one checkpoint against the next. Paired measures
use this correspondence, which optimal transport ignores.

* :func:`linear_cka` — linear centred kernel alignment (Kornblith et al. 2019), in [0, 1],
  invariant to orthogonal transforms and isotropic scaling; works across widths d1 ≠ d2.
* :func:`procrustes_distance` — orthogonal Procrustes distance (Ding et al. 2021) between the
  centred, Frobenius-normalised clouds: ``2 - 2 ‖X̃ᵀỸ‖_*`` in [0, 2]; 0 iff one cloud is a
  rotated, shifted and isotropically scaled copy of the other.
* :func:`paired_displacement` — mean Euclidean distance ``mean_i |x_i - y_i|`` in the raw
  (shared) basis; not rotation-invariant, on purpose.
"""

from __future__ import annotations

import torch

from reprlab.errors import DataError


def _paired(x: torch.Tensor, y: torch.Tensor, same_width: bool = False
            ) -> tuple[bool, torch.Tensor, torch.Tensor]:
    squeeze = x.dim() == 2
    x = x.unsqueeze(0) if x.dim() == 2 else x
    y = y.unsqueeze(0) if y.dim() == 2 else y
    if x.dim() != 3 or y.dim() != 3:
        raise DataError(f"clouds must be [n, d] or [B, n, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise DataError(f"paired measures need the same inputs in both clouds, got {x.shape[1]} "
                        f"and {y.shape[1]} rows; capture both on the same evaluation set")
    if same_width and x.shape[2] != y.shape[2]:
        raise DataError(f"paired displacement needs one shared space, got widths {x.shape[2]} "
                        f"and {y.shape[2]}")
    return squeeze, x, y


def _work(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype in (torch.float16, torch.bfloat16, torch.float32) else t


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA ``[B]`` of ``x [B, n, d1]`` and ``y [B, n, d2]``.

    ``‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)`` with column-centred X̃, Ỹ; computed through the
    ``n × n`` Gram matrices when n < d (same value, cheaper). Accumulated in float64.
    """
    squeeze, x, y = _paired(x, y)
    xd, yd = _work(x), _work(y)
    xc = xd - xd.mean(1, keepdim=True)
    yc = yd - yd.mean(1, keepdim=True)
    n, d1, d2 = x.shape[1], x.shape[2], y.shape[2]
    if n < max(d1, d2):
        kx, ky = xc @ xc.transpose(1, 2), yc @ yc.transpose(1, 2)
        hsic = (kx * ky).sum((1, 2))
        nx, ny = kx.flatten(1).norm(dim=1), ky.flatten(1).norm(dim=1)
    else:
        hsic = (yc.transpose(1, 2) @ xc).flatten(1).pow(2).sum(1)
        nx = (xc.transpose(1, 2) @ xc).flatten(1).norm(dim=1)
        ny = (yc.transpose(1, 2) @ yc).flatten(1).norm(dim=1)
    res = (hsic / (nx * ny).clamp_min(torch.finfo(hsic.dtype).tiny)).to(x.dtype)
    return res[0] if squeeze else res


def procrustes_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes distance ``[B]`` between centred, unit-Frobenius ``x`` and ``y``.

    ``min_Q ‖X̃ - ỸQ‖_F² = 2 - 2 ‖X̃ᵀỸ‖_*`` over orthogonal Q (zero-padding the narrower cloud
    when widths differ). Accumulated in float64.
    """
    squeeze, x, y = _paired(x, y)
    xd, yd = _work(x), _work(y)
    xc = xd - xd.mean(1, keepdim=True)
    yc = yd - yd.mean(1, keepdim=True)
    xc = xc / xc.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
    yc = yc / yc.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
    n, d1, d2 = x.shape[1], x.shape[2], y.shape[2]
    if n < min(d1, d2):  # X̃ᵀ = Q1 R1, Ỹᵀ = Q2 R2: ‖X̃ᵀỸ‖_* = ‖R1 R2ᵀ‖_* (n × n)
        r1 = torch.linalg.qr(xc.transpose(1, 2)).R
        r2 = torch.linalg.qr(yc.transpose(1, 2)).R
        nuc = torch.linalg.svdvals(r1 @ r2.transpose(1, 2)).sum(-1)
    else:
        nuc = torch.linalg.svdvals(xc.transpose(1, 2) @ yc).sum(-1)
    res = (2 - 2 * nuc).clamp_min(0).to(x.dtype)
    return res[0] if squeeze else res


def paired_displacement(x: torch.Tensor, y: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Mean paired displacement ``mean_i |x_i - y_i|`` ``[B]`` (``squared``: mean of squares)."""
    squeeze, x, y = _paired(x, y, same_width=True)
    d2 = (_work(x) - _work(y)).pow(2).sum(-1)
    res = (d2 if squared else d2.sqrt()).mean(-1).to(x.dtype)
    return res[0] if squeeze else res


#: paired measures by name: (x [B, n, d1], y [B, n, d2]) -> [B]
PAIRED = {
    "cka": linear_cka,
    "procrustes": procrustes_distance,
    "displacement": paired_displacement,
}
