"""Shared bases for comparing clouds.

Squared-Euclidean OT is not rotation-invariant, so clouds must be compared in one basis:
the raw space, or one PCA fitted on the *union* of the clouds being compared (never one PCA
per cloud, which changes distances for identical information).
"""

from __future__ import annotations

import torch

from reprlab.errors import ConfigError, DataError


def fit_shared_pca(clouds: list[torch.Tensor] | torch.Tensor, k: int,
                   max_fit_points: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and components ``[d, k]`` of one PCA on the union of ``clouds`` (``[n_i, d]``).

    At most ``max_fit_points`` points (sampled with ``seed``) are used for the fit.
    """
    union = torch.cat(list(clouds)) if isinstance(clouds, list) else clouds.reshape(-1, clouds.shape[-1])
    d = union.shape[-1]
    if not 0 < k <= d:
        raise ConfigError(f"PCA dimension must lie in 1..{d}, got {k}")
    if union.shape[0] > max_fit_points:
        g = torch.Generator().manual_seed(seed)
        union = union[torch.randperm(union.shape[0], generator=g)[:max_fit_points]]
    if union.shape[0] < k:
        raise DataError(f"{union.shape[0]} points cannot fit a {k}-component PCA; lower --pca")
    u = union.double()
    mean = u.mean(0)
    _, _, vh = torch.linalg.svd(u - mean, full_matrices=False)
    return mean.to(union.dtype), vh[:k].T.to(union.dtype)


def project(cloud: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """``[..., n, d] -> [..., n, k]`` in the shared basis."""
    return (cloud - mean.to(cloud)) @ components.to(cloud)


def shared_basis(clouds: torch.Tensor, pca: int | None, seed: int = 0) -> torch.Tensor:
    """Return ``clouds [K, n, d]`` unchanged (``pca`` None/0) or projected on one union PCA."""
    if not pca:
        return clouds
    mean, comps = fit_shared_pca(clouds, pca, seed=seed)
    return project(clouds, mean, comps)
