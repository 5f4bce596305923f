"""Train a talkative lens: the target model is frozen; the decoder/encoder pair, its
projections and soft prompts learn from scheduled losses (see :mod:`.losses`). Resumable
(one training-state file).

Data-parallel under ``torchrun`` / ``accelerate launch``: every process draws the batch a single
process would draw at that step (the same epoch order) and the Gumbel noise of the whole batch
(seeded by the step, one row per sample), then runs its contiguous slice of the rows
(:func:`~reprlab.distributed.shard_bounds`). Every loss is a mean over the batch's rows, so each
process weighs its losses by its share of the rows and the gradients are summed: the step, the
clipping and the logged losses are those of one process on the whole batch."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import reprlab.distributed as dd
from reprlab.cliutil import require
from reprlab.errors import ConfigError
from reprlab.lenses.schedules import parse_tau, parse_weight
from reprlab.lenses.talk.data import LensData
from reprlab.lenses.talk.lens import TalkativeLens, build_module
from reprlab.lenses.talk.losses import LOSSES, combine, resample_splice
from reprlab.lenses.talk.model import TalkModule, gumbel_noise
from reprlab.lenses.talk.prompts import encoder_prompt_ids, prompt_ids, site_layer
from reprlab.lenses.talk.splice import splice_logits
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites
from reprlab.sweeps.progress import report as report_step
from reprlab.trainstate import load_train_state, save_train_state

logger = logging.getLogger(__name__)

TAU_FLOOR = 0.1


@dataclass
class TalkConfig:
    """Settings of a talkative-lens run (schedules use :mod:`reprlab.lenses.schedules`)."""

    site: str = "layers.2"
    tokens: int = 4
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    proj_lr: float = 1e-3
    tau: str = "cosine:1.0:0.1"
    w_kl: str = "1.0"
    w_mse: str = "1.0"
    w_lm: str = "0.0"
    w_ent: str = "0.0"
    resample_ablation: bool = False
    freeze_decoder: bool = False
    freeze_encoder: bool = False
    rect_projection: bool = False
    decoder: str = ""
    prompt: str = "<embed> means"
    encoder_prompt: str = ""
    lm_prefix: str = ""
    encoder_layer: int | None = None
    kv_cache: bool = True
    grad_clip: float = 1.0
    eval_rows: int = 64
    seed: int = 0
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        require(self.tokens >= 1, f"--tokens must be at least 1 (the explanation length), "
                f"got {self.tokens}")
        require(self.tokens <= 64, f"--tokens {self.tokens} is too long; use 2-32")
        for name in ("steps", "batch_size", "checkpoint_every"):
            require(getattr(self, name) >= 1,
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        require(self.lr > 0 and self.proj_lr > 0, "--lr and --proj-lr must be positive")
        require(self.eval_rows >= 0, f"--eval-rows must be 0 or more, got {self.eval_rows}")
        parse_tau(self.tau, TAU_FLOOR)
        ws = {n: parse_weight(getattr(self, f"w_{n}"), f"--w-{n}")
              for n in ("kl", "mse", "lm", "ent")}
        require(any(w.start > 0 or w.end > 0 for k, w in ws.items() if k != "ent"),
                "--w-kl, --w-mse and --w-lm are all 0; give at least one loss a weight")

    def schedules(self) -> tuple[Any, dict[str, Any]]:
        return parse_tau(self.tau, TAU_FLOOR), {
            "kl": parse_weight(self.w_kl, "--w-kl"), "mse": parse_weight(self.w_mse, "--w-mse"),
            "lm": parse_weight(self.w_lm, "--w-lm"),
            "entropy": parse_weight(self.w_ent, "--w-ent")}


def make_spec(lm: LoadedModel, cfg: TalkConfig) -> dict[str, Any]:
    site = resolve_sites(lm, cfg.site)
    require(len(site) == 1, f"--site names {len(site)} sites; give one, e.g. layers.2")
    ids, marker = prompt_ids(lm.tokenizer, cfg.prompt)
    layer = cfg.encoder_layer if cfg.encoder_layer is not None else site_layer(site[0])
    return {"site": site[0].name, "tokens": cfg.tokens, "prompt": cfg.prompt,
            "prompt_ids": ids, "marker": marker,
            "encoder_prompt_ids": encoder_prompt_ids(lm.tokenizer, cfg.encoder_prompt),
            "encoder_layer": layer, "decoder": cfg.decoder or None,
            "freeze_decoder": cfg.freeze_decoder, "freeze_encoder": cfg.freeze_encoder,
            "rect_projection": cfg.rect_projection}


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


def _prefix(lm: LoadedModel, text: str) -> list[int]:
    ids = encoder_prompt_ids(lm.tokenizer, text)
    if not ids:
        tok = lm.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.eos_token_id
        ids = [int(first if first is not None else 0)]
    return ids


def step_losses(lm: LoadedModel, module: TalkModule, data: LensData, idx: torch.Tensor,
                cfg: TalkConfig, tau: float, weights: dict[str, float], noise: torch.Tensor,
                noise2: torch.Tensor | None, site: Any, prefix: list[int]
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every loss of one batch (dict) and the reconstructions ``Â [B, d]``."""
    dev = lm.device
    a = data.a[idx].to(dev)
    gen = module.generate(a, cfg.tokens, tau, noise.to(dev), use_cache=cfg.kv_cache)
    a_hat = module.encode(gen.onehots)
    values: dict[str, torch.Tensor] = {
        "mse": LOSSES["mse"](a_hat, a, data.variance.to(dev)),
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


def _optimizer(module: TalkModule, cfg: TalkConfig) -> torch.optim.Optimizer:
    small = {id(p) for m in (module.proj_in, module.proj_out) for p in m.parameters()}
    small |= {id(module.dec_prompt), id(module.enc_prompt)}
    groups = [{"params": [p for p in module.trainable() if id(p) in small], "lr": cfg.proj_lr},
              {"params": [p for p in module.trainable() if id(p) not in small], "lr": cfg.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)


def step_batch(batch_size: int, n_train: int, world_size: int = 1) -> int:
    """The global batch of a step (``batch_size``, at most the training samples); one line
    when it cannot give every process at least one row."""
    batch = max(1, min(batch_size, n_train))
    if batch < world_size:
        raise ConfigError(f"a step's batch of {batch} samples cannot be split over "
                          f"{world_size} processes; give --batch-size {world_size} or more "
                          f"(and at least {world_size} training samples)")
    return batch


def train_talk(lm: LoadedModel, data: LensData, cfg: TalkConfig, *,
               state_path: str | Path | None = None, progress: bool = True,
               stop_after: int | None = None, world: dd.World | None = None
               ) -> tuple[TalkativeLens, list[dict], dict]:
    """Train on ``data`` (all but the last ``cfg.eval_rows`` samples); returns the lens, the
    per-step history and run facts (sample split, rank checksums)."""
    world = world or dd.World()
    if stop_after is None and os.environ.get("REPRLAB_STOP_AFTER"):
        stop_after = int(os.environ["REPRLAB_STOP_AFTER"])
    for p in lm.model.parameters():
        p.requires_grad_(False)
    lm.model.eval()
    spec = make_spec(lm, cfg)
    site = resolve_sites(lm, spec["site"])[0]
    if site.name != data.site:
        raise ConfigError(f"the activations in {data.path} are from {data.site}, not "
                          f"{site.name}; use another --store")
    n_eval = min(cfg.eval_rows, max(0, len(data) - 1))
    train_idx = list(range(len(data) - n_eval))
    batch = step_batch(cfg.batch_size, len(train_idx), world.size)
    torch.manual_seed(cfg.seed)
    module = build_module(lm, spec)
    module.eval()  # no dropout: the pair is deterministic given the Gumbel noise
    params = module.trainable()
    dd.broadcast_parameters(params, world)
    opt = _optimizer(module, cfg)
    tau_s, w_s = cfg.schedules()
    steps_per_epoch = max(1, len(train_idx) // batch)
    step, history = 0, []
    if state_path is not None and Path(state_path).exists():
        info = load_train_state(state_path, module, opt, None, rng=False)
        if info is not None:
            if info.get("config") != asdict(cfg):
                raise ConfigError(f"{state_path} holds a run with other settings; use another "
                                  "--out or delete it to start over")
            step, history = info["step"], info["history"]
            logger.info("resuming the talkative lens at step %d", step)
    vocab = module.decoder.get_input_embeddings().weight.shape[0]
    prefix = _prefix(lm, cfg.lm_prefix)
    bar = tqdm(total=cfg.steps, initial=step, desc="talkative lens", unit="step",
               disable=not progress or not world.main)
    try:
        while step < cfg.steps:
            epoch, k = divmod(step, steps_per_epoch)
            g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
            order = torch.randperm(len(train_idx), generator=g)
            rows = torch.tensor(train_idx)[order[k * batch:(k + 1) * batch]]
            lo, hi = dd.shard_bounds(len(rows), world.rank, world.size)
            share = (hi - lo) / len(rows)
            idx = rows[lo:hi]
            tau = max(TAU_FLOOR, tau_s(step, cfg.steps, steps_per_epoch))
            weights = {n: s(step, cfg.steps, steps_per_epoch) for n, s in w_s.items()}
            # the whole batch's noise on every rank (seeded by the step), sliced to its rows
            gn = torch.Generator().manual_seed(cfg.seed * 7919 + step * 104729)
            noise = gumbel_noise((len(rows), cfg.tokens, vocab), gn)[lo:hi]
            noise2 = gumbel_noise((len(rows), cfg.tokens, vocab), gn)[lo:hi] \
                if cfg.resample_ablation else None
            values, a_hat = step_losses(lm, module, data, idx, cfg, tau, weights, noise, noise2,
                                        site, prefix)
            total = combine(values, weights)
            opt.zero_grad(set_to_none=True)
            (total * share).backward()  # a mean over rows: the shares' sum is the batch's
            dd.sum_gradients(params, world)  # (one process: share 1, nothing to sum)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            m = _step_metrics(total, values, a_hat, data, idx, share, world, lm.device)
            row = {"step": step, "loss": m["loss"], "tau": tau, **m}
            row.update({f"w_{n}": w for n, w in weights.items()})
            history.append(row)
            if world.main:
                report_step(step, **{k: v for k, v in row.items() if k != "step"})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", fve=f"{row['fve_batch']:.2f}")
            if state_path is not None and world.main and (
                    step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after):
                save_train_state(state_path, module, opt, None,
                                 {"step": step, "history": history, "config": asdict(cfg),
                                  "world": world.size}, trainable_only=True, rng=False)
            if stop_after is not None and step == stop_after and step < cfg.steps:
                dd.barrier(world)
                raise KeyboardInterrupt
    finally:
        bar.close()
    checks = dd.gather_strings(dd.checksum(params), world)
    config = {"spec": spec, "train": asdict(cfg), "model": _model_summary(lm),
              "data": {"path": str(data.path), "samples": len(data)}}
    lens = TalkativeLens.from_module(module, config, data.mean, data.variance)
    facts = {"train_samples": len(train_idx), "eval_indices": list(range(len(train_idx),
                                                                         len(data))),
             "rank_checksums": checks, "world_size": world.size,
             "steps_per_epoch": steps_per_epoch}
    return lens, history, facts


def _step_metrics(total: torch.Tensor, values: dict[str, torch.Tensor], a_hat: torch.Tensor,
                  data: LensData, idx: torch.Tensor, share: float, world: dd.World,
                  device: Any) -> dict[str, float]:
    """The whole batch's loss, per-loss values and FVE: share-weighted losses and the FVE's
    two sums added over processes (one all-reduce)."""
    a = data.a[idx].double()
    err = float(((a_hat.detach().cpu().double() - a) ** 2).sum())
    spread = float(((a - data.mean.double()) ** 2).sum())
    names = list(values)
    local = [float(total.detach()) * share, *(float(values[n].detach()) * share for n in names),
             err, spread]
    got = dd.all_sum_list(local, world, device)
    out = {"loss": got[0], "fve_batch": 1.0 - got[-2] / max(got[-1], 1e-30)}
    out.update({f"loss_{n}": v for n, v in zip(names, got[1:-2], strict=True)})
    return out


def _model_summary(lm: LoadedModel) -> dict:
    from reprlab.lenses.logit import model_summary

    return model_summary(lm)
