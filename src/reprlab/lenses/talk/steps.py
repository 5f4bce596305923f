"""The losses of one training step of each recipe, on a batch of sample indices:
``consistency`` (Gumbel straight-through decode, encode, KL with the reconstruction spliced
into the target, MSE, fluency prior, entropy), the ``nla`` warm start (teacher-forced
cross-entropy of the decoder on given explanations, MSE of the encoder from them) and the
``nla`` GRPO step (K sampled explanations per activation, reward -normalised MSE,
group-normalised advantages, KL to the warm-start decoder)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError
from reprlab.lenses.metrics import kl_logits
from reprlab.lenses.talk.data import LensData
from reprlab.lenses.talk.grpo import (
    group_advantages,
    length_of,
    policy_loss,
    reconstruction_reward,
    reference_kl,
)
from reprlab.lenses.talk.losses import LOSSES, resample_splice
from reprlab.lenses.talk.model import TalkModule
from reprlab.lenses.talk.prompts import encoder_prompt_ids
from reprlab.lenses.talk.splice import splice_logits
from reprlab.models import LoadedModel


def prior_logits(lm: LoadedModel, prefix_ids: list[int], onehots: torch.Tensor) -> torch.Tensor:
    """The frozen target LM's logits ``[B, t, V]`` for each generated token, after a prefix."""
    emb = lm.model.get_input_embeddings().weight
    if onehots.shape[-1] != emb.shape[0]:
        raise ConfigError("--w-lm needs a decoder with the target model's vocabulary")
    b, t = onehots.shape[:2]
    pre = emb[torch.tensor(prefix_ids, device=emb.device)][None].expand(b, -1, -1)
    x = torch.cat([pre, onehots.to(emb.dtype) @ emb], dim=1)
    logits = lm.model(inputs_embeds=x).logits
    n = len(prefix_ids)
    return logits[:, n - 1: n - 1 + t].float()


def lm_prefix(lm: LoadedModel, text: str) -> list[int]:
    ids = encoder_prompt_ids(lm.tokenizer, text)
    if not ids:
        tok = lm.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.eos_token_id
        ids = [int(first if first is not None else 0)]
    return ids


def step_losses(lm: LoadedModel, module: TalkModule, data: LensData, idx: torch.Tensor,
                cfg: Any, tau: float, weights: dict[str, float], noise: torch.Tensor,
                noise2: torch.Tensor | None, site: Any, prefix: list[int],
                variance: torch.Tensor | float | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every loss of one batch (dict) and the reconstructions ``Â [B, d]``."""
    dev = lm.device
    if variance is None:
        variance = data.variance
    variance = torch.as_tensor(variance).to(dev)
    a = data.a[idx].to(dev)
    gen = module.generate(a, cfg.tokens, tau, noise.to(dev), use_cache=cfg.kv_cache)
    a_hat = module.encode(gen.onehots)
    values: dict[str, torch.Tensor] = {
        "mse": LOSSES["mse"](a_hat, a, variance),
        "entropy": LOSSES["entropy"](gen.logits),
    }
    if weights.get("kl", 0) > 0:
        splice = a_hat
        if cfg.resample_ablation:
            a2 = data.a2[idx].to(dev)
            gen2 = module.generate(a2, cfg.tokens, tau, noise2.to(dev), use_cache=cfg.kv_cache)
            splice = resample_splice(a_hat, a2, module.encode(gen2.onehots))
        ids, pos = data.context(idx)
        orig, rec = splice_logits(lm, site, ids, pos, splice)
        values["kl"] = LOSSES["kl"](orig, rec)
    if weights.get("lm", 0) > 0:
        values["lm"] = LOSSES["lm"](gen.logits, prior_logits(lm, prefix, gen.onehots))
    return values, a_hat


def warm_losses(module: TalkModule, data: LensData, idx: torch.Tensor, explanations: torch.Tensor,
                variance: torch.Tensor | float, device: Any
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Warm start: cross-entropy of the decoder on the given explanations ``[N, t]`` (teacher
    forced) and the encoder's normalised MSE from them."""
    a = data.a[idx].to(device)
    ids = explanations[idx].to(device)
    logits = module.score(a, ids)
    a_hat = module.encode(ids)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
    return {"ce": ce, "mse": LOSSES["mse"](a_hat, a, torch.as_tensor(variance).to(device))}, a_hat


def mask_after_stop(ids: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
    """Tokens after the first stop token replaced by it, so a shorter explanation says less."""
    if not stop_ids:
        return ids
    n = length_of(ids, stop_ids).long()
    first_stop = min(stop_ids)
    keep = torch.arange(ids.shape[1], device=ids.device)[None] <= n[:, None]
    return torch.where(keep, ids, torch.full_like(ids, first_stop))


def grpo_losses(module: TalkModule, ref: TalkModule, data: LensData, idx: torch.Tensor,
                k: int, noise: torch.Tensor, variance: torch.Tensor | float, kl_ref: float,
                device: Any, len_penalty: float = 0.0, stop_ids: set[int] | None = None,
                reward_kl: float = 0.0, lm: LoadedModel | None = None, site: Any = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One GRPO step's losses: ``k`` explanations per activation sampled in one batched decode
    (``noise [B·k, t, V]``, Gumbel: exact samples of the decoder's softmax), rewarded by
    ``-normalised MSE`` of the encoder's reconstruction (minus ``len_penalty`` × the share
    of the ``t`` tokens before a stop token, minus ``reward_kl`` × the KL in nats of the
    target ``lm``'s next-token distribution with the reconstruction spliced in at ``site``),
    group-normalised advantages, KL(π ‖ π_warm) and the encoder's MSE on the samples. Returns
    the losses and the reconstructions of the first sample of each activation ``[B, d]``."""
    a = data.a[idx].to(device)
    rep = a.repeat_interleave(k, 0)
    var = torch.as_tensor(variance).to(device)
    t = noise.shape[1]
    with torch.no_grad():
        ids = module.generate(rep, t, 1.0, noise.to(device)).ids
    seen = mask_after_stop(ids, stop_ids or set()) if len_penalty > 0 else ids
    a_hat = module.encode(seen)
    reward = reconstruction_reward(a_hat.detach(), rep, var)
    if len_penalty > 0:
        reward = reward - len_penalty * length_of(ids, stop_ids or set()) / t
    if reward_kl > 0:
        ctx, pos = data.context(idx)
        with torch.no_grad():
            orig, rec = splice_logits(lm, site, ctx.repeat_interleave(k, 0),
                                      pos.repeat_interleave(k, 0), a_hat.detach())
        reward = reward - reward_kl * kl_logits(orig, rec)
    adv = group_advantages(reward, k)
    logits = module.score(rep, ids)
    with torch.no_grad():
        ref_logits = ref.score(rep, ids)
    values = {"pg": policy_loss(logits, ids, adv), "kl_ref": reference_kl(logits, ref_logits),
              "mse": LOSSES["mse"](a_hat, rep, var), "reward": reward.mean()}
    return values, a_hat.reshape(len(idx), k, -1)[:, 0]
