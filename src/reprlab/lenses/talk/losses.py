"""Losses of the talkative lens: pure functions of tensors (shapes in the docstrings), and a
registry the trainer combines with scheduled weights. The trainer only wires them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reprlab.lenses.metrics import entropy_logits, kl_logits


def consistency_kl(orig_logits: torch.Tensor, recon_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(P_orig ‖ P_recon) in nats of the target's next-token distributions ``[B, V]``."""
    return kl_logits(orig_logits.detach(), recon_logits).mean()


def normalised_mse(a_hat: torch.Tensor, a: torch.Tensor, variance: torch.Tensor | float
                   ) -> torch.Tensor:
    """``mean (Â - A)²`` over ``[B, d]`` divided by the activations' variance (mean over
    dimensions of the per-dimension variance of the whole dataset): ``1 - FVE`` in expectation."""
    return ((a_hat.float() - a.float()) ** 2).mean() / variance


def lm_prior(dec_logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """Fluency prior: mean KL(P_decoder ‖ P_frozen LM) over the ``t`` generated positions,
    ``[B, t, V]`` each; the frozen LM read a natural-language prefix + the generated tokens."""
    return kl_logits(dec_logits, prior_logits).mean()


def decoder_entropy(dec_logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the decoder's token distributions ``[B, t, V]``."""
    return entropy_logits(dec_logits).mean()


def resample_splice(a_hat: torch.Tensor, a_other: torch.Tensor, a_other_hat: torch.Tensor
                    ) -> torch.Tensor:
    """Resample ablation: ``Â + (A′ − Â′)``, the reconstruction with another sequence's error."""
    return a_hat + (a_other - a_other_hat)


#: loss name -> (sign in the total, function name for the report)
SIGNS: dict[str, float] = {"kl": 1.0, "mse": 1.0, "lm": 1.0, "entropy": -1.0,
                           # the nla recipe: warm-start cross-entropy, GRPO policy loss and
                           # the KL to the warm-start decoder (see :mod:`.grpo`)
                           "ce": 1.0, "pg": 1.0, "kl_ref": 1.0}

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "kl": consistency_kl,
    "mse": normalised_mse,
    "lm": lm_prior,
    "entropy": decoder_entropy,
}


def combine(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``Σ sign·w·loss``: ``w_kl·KL + w_mse·MSE + α·L_lm − w_ent·H`` over the losses present."""
    total = None
    for name, v in values.items():
        w = weights.get(name, 0.0)
        if w == 0:
            continue
        term = SIGNS[name] * w * v
        total = term if total is None else total + term
    if total is None:
        raise ValueError("every loss weight is zero")
    return total
