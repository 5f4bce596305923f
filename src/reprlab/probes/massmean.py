"""Difference-of-means ("mass-mean") probes, plain and "iid" (Marks & Tegmark 2023).

Inputs are standardised activations ``X [L, n, d]`` (per-layer mean/std from the training
rows, ``scale [L, d]`` = that std) so that the fitted weights plug into the same linear probe
as logistic regression. The *direction* lives in the raw activation space:

* plain: ``theta = mean(x | y=1) - mean(x | y=0)``; the probe scores ``theta . x``.
* iid: ``Sigma^-1 theta`` with ``Sigma`` the pooled within-class covariance, shrunk towards
  the identity in standardised coordinates (Ledoit & Wolf 2004 by default, i.e. towards the
  diagonal of the raw covariance) so that it stays invertible when ``n`` is near ``d``.

Multiclass problems use one direction per class: the class mean minus the mean of all other
rows (one-vs-rest). Projections are then turned into probabilities by a small logistic
calibration (a scale and an offset per class; softmax over the class projections when
``K > 2``), fitted on the training rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.errors import DataError
from reprlab.probes.logistic import fit_logistic


def class_means(X: torch.Tensor, Y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``X [L, n, d]``, ``Y [P, n]`` -> means ``[L, P, K, d]`` and counts ``[P, K]``."""
    onehot = F.one_hot(Y, n_classes).to(X.dtype)  # [P, n, K]
    counts = onehot.sum(1)
    sums = torch.einsum("lnd,pnk->lpkd", X, onehot)
    return sums / counts.clamp_min(1)[None, :, :, None], counts


def contrast_directions(X: torch.Tensor, Y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean differences in the coordinates of ``X``: ``[L, P, K', d]``.

    Binary: ``mu_1 - mu_0`` (``K' = 1``); multiclass: ``mu_k - mu_rest`` for every class.
    """
    means, counts = class_means(X, Y, n_classes)
    if n_classes == 2:
        return (means[:, :, 1] - means[:, :, 0]).unsqueeze(2)
    total = means * counts[None, :, :, None]
    rest = (total.sum(2, keepdim=True) - total) / (counts.sum(1)[:, None] - counts).clamp_min(1)[None, :, :, None]
    return means - rest


def within_class_residuals(X: torch.Tensor, Y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``x_i - mu_{y_i}`` for every problem: ``[L, P, n, d]``."""
    means, _ = class_means(X, Y, n_classes)  # [L, P, K, d]
    idx = Y[None, :, :, None].expand(X.shape[0], -1, -1, X.shape[-1])
    return X.unsqueeze(1) - means.gather(2, idx)


def shrunk_covariance(R: torch.Tensor, shrinkage: float | str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Covariance of residuals ``R [..., n, d]`` shrunk towards ``mean-variance * I``.

    ``shrinkage="auto"`` uses the Ledoit-Wolf estimate of the optimal intensity. Returns the
    matrix ``[..., d, d]`` and the intensity used ``[...]``.
    """
    n, d = R.shape[-2:]
    S = R.transpose(-1, -2) @ R / n
    mu = S.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    eye = torch.eye(d, dtype=R.dtype, device=R.device)
    if shrinkage == "auto":
        d2 = (S - mu[..., None, None] * eye).pow(2).sum((-1, -2))
        sq = R.pow(2).sum(-1)  # [..., n]
        quad = ((R @ S) * R).sum(-1)  # r_i^T S r_i
        b_bar = (sq.pow(2) - 2 * quad).sum(-1) / n ** 2 + S.pow(2).sum((-1, -2)) / n
        alpha = (torch.minimum(b_bar, d2) / d2.clamp_min(1e-30)).clamp(0, 1)
    else:
        alpha = torch.full(mu.shape, float(shrinkage), dtype=R.dtype, device=R.device)
    cov = (1 - alpha)[..., None, None] * S + (alpha * mu)[..., None, None] * eye
    return cov, alpha


def fit_massmean(X: torch.Tensor, Y: torch.Tensor, *, n_classes: int, scale: torch.Tensor,
                 iid: bool = False, shrinkage: float | str = "auto", calib_l2: float = 1e-4,
                 max_iter: int = 200) -> dict:
    """Fit mass-mean probes for every (layer, problem).

    ``X [L, n, d]`` standardised, ``Y [P, n]``, ``scale [L, d]`` (training std). Returns
    ``weight [L, P, K', d]`` / ``bias [L, P, K']`` acting on standardised inputs, the raw-space
    ``direction [L, P, K', d]`` (unnormalised), and ``shrinkage [L, P]`` for ``iid``.
    """
    if Y.dim() == 1:
        Y = Y.unsqueeze(0)
    diff = contrast_directions(X, Y, n_classes)  # standardised coordinates
    out: dict = {}
    if iid:
        R = within_class_residuals(X, Y, n_classes)
        cov, alpha = shrunk_covariance(R, shrinkage)  # [L, P, d, d]
        # the shrunk covariance is positive definite: a Cholesky solve is the apt method, and
        # batched LU solves fail with several threads on torch 2.13's CPU build (MKL SLASWP)
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info > 0).any()):
            raise DataError("the within-class covariance is not positive definite even after "
                             "shrinkage; use mass-mean (not -iid) or pass shrinkage > 0")
        w_std = torch.cholesky_solve(diff.transpose(-1, -2), chol).transpose(-1, -2)
        out["shrinkage"] = alpha
    else:
        # project raw x on the raw mean difference: w_std = (diff * std) * std
        w_std = diff * scale[:, None, None, :] ** 2
    direction = w_std / scale[:, None, None, :]
    proj = torch.einsum("lnd,lpkd->lpnk", X, w_std)  # [L, P, n, K']
    centre = proj.mean(2, keepdim=True)
    spread = proj.std(2, keepdim=True).clamp_min(1e-12)
    calib = fit_logistic((proj - centre) / spread, Y, n_classes=n_classes, l2=calib_l2,
                         max_iter=max_iter, precondition=False)
    # logits = A ((w.x - c) / s) + b  ->  weight = A @ (w / s), bias = b - A @ (c / s)
    A = calib.weight  # [L, P, K', K'(features)]
    wn = w_std / spread.squeeze(2)[..., None]
    out["weight"] = torch.einsum("lpkj,lpjd->lpkd", A, wn)
    out["bias"] = calib.bias - torch.einsum("lpkj,lpj->lpk", A,
                                            (centre / spread).squeeze(2))
    out["direction"] = direction
    out["curves"] = calib.curves
    return out
