"""Pure maths of the lens family: divergences in bits, reconstruction quality, token usage.

Every function takes logits or activations with shapes in its docstring and returns tensors;
nothing here touches a model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def kl_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) in nats per row: ``[..., V], [..., V] -> [...]`` (P, Q = softmax of logits)."""
    logp = F.log_softmax(p_logits.float(), dim=-1)
    return kl_from_logp(logp, logp.exp(), q_logits)


def kl_from_logp(logp: torch.Tensor, p: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) with P given as log-probabilities and probabilities (computed once when one
    P is compared with many Q): ``[..., V] x3 -> [...]``."""
    logq = F.log_softmax(q_logits.float(), dim=-1)
    return (p * (logp - logq)).sum(-1)


def entropy_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits): ``[..., V] -> [...]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def cross_entropy_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats of ``labels [...]`` under softmax(``logits [..., V]``) -> ``[...]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def fve(a_hat: torch.Tensor, a: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of variance explained: ``1 - Σ‖Â - A‖² / Σ‖A - Ā‖²`` over rows ``[N, d]``.

    ``mean [d]`` is the reference mean Ā (default: the mean of ``a``).
    """
    a, a_hat = a.double(), a_hat.double()
    mu = a.mean(0) if mean is None else mean.double()
    return 1.0 - ((a_hat - a) ** 2).sum() / ((a - mu) ** 2).sum().clamp_min(1e-30)


def normalised_rmse(a_hat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean (Â - A)²) / sqrt(mean A²)`` over ``[N, d]``: 0 perfect, 1 = predicting 0."""
    a, a_hat = a.double(), a_hat.double()
    return ((a_hat - a) ** 2).mean().sqrt() / (a ** 2).mean().sqrt().clamp_min(1e-30)


def token_usage(tokens: torch.Tensor) -> dict[str, float]:
    """Distinct tokens among generated ids ``[N, t]`` and the entropy (bits) of their counts."""
    flat = tokens.reshape(-1)
    if flat.numel() == 0:
        return {"distinct": 0, "fraction_distinct": 0.0, "entropy_bits": 0.0}
    _, counts = torch.unique(flat, return_counts=True)
    p = counts.double() / counts.sum()
    return {"distinct": int(counts.numel()),
            "fraction_distinct": float(counts.numel() / flat.numel()),
            "entropy_bits": float(-(p * p.log2()).sum())}
