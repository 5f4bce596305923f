"""GRPO for the talkative lens's decoder, as pure functions of tensors: K explanations are
sampled per activation, each is rewarded by how well the encoder rebuilds the activation from
it, and advantages are the rewards normalised within each activation's group (Shao et al.
2024; the recipe of Natural Language Autoencoders, Fraser-Taliente et al. 2026).

Shapes: ``B`` activations, ``K`` samples each, rows ordered activation-major (``B·K`` rows,
sample ``k`` of activation ``b`` at row ``b·K + k``), ``t`` tokens, vocabulary ``V``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprlab.lenses.metrics import kl_logits


def reconstruction_reward(a_hat: torch.Tensor, a: torch.Tensor, variance: torch.Tensor | float
                          ) -> torch.Tensor:
    """``-mean_d (Â - A)² / variance`` per row ``[N]``: minus the normalised MSE (0 is perfect,
    -1 is as bad as predicting the mean on average)."""
    return -((a_hat.float() - a.float()) ** 2).mean(-1) / variance


def group_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean_group) / (std_group + eps)`` for rewards ``[B·K]`` in groups of ``k``; a
    group whose samples tie gets advantage 0."""
    r = rewards.reshape(-1, k).double()
    mean = r.mean(1, keepdim=True)
    std = r.std(1, unbiased=False, keepdim=True) if k > 1 else torch.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1).to(rewards.dtype)


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``Σ_t log p(ids_t)`` per row ``[N]`` from teacher-forced logits ``[N, t, V]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)


def policy_loss(logits: torch.Tensor, ids: torch.Tensor, advantages: torch.Tensor
                ) -> torch.Tensor:
    """REINFORCE with group-normalised advantages: ``-mean(A · log π(explanation))``."""
    return -(advantages.detach() * sequence_logprob(logits, ids)).mean()


def reference_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows and tokens of KL(π ‖ π_ref) in nats (exact over the vocabulary)."""
    return kl_logits(logits, ref_logits.detach()).mean()


def length_of(ids: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
    """Tokens before the first stop token (eos, pad) per row ``[N]`` (``t`` when none)."""
    t = ids.shape[1]
    stop = torch.zeros_like(ids, dtype=torch.bool)
    for s in stop_ids:
        stop |= ids == s
    first = torch.where(stop.any(1), stop.float().argmax(1), torch.full_like(ids[:, 0], t))
    return first.float()
