"""Train a talkative lens: the target model is frozen; the decoder/encoder pair, its
projections and soft prompts learn. Two recipes (:mod:`.steps` holds their losses):

* ``consistency``: end to end, Gumbel straight-through, scheduled KL + MSE + fluency prior;
* ``nla``: a warm start on given explanations (teacher-forced decoder, encoder MSE; their
  first ``warm_context`` slots quote the text), then GRPO against the warm-start decoder.

Every epoch walks every training sample (every non-special token position of the training
texts) in a fresh order; the run's length and the schedules are in epochs, so a longer run
does not anneal faster. At the end of each epoch the held-out curve (lens FVE, shuffled and
empty explanations) is measured. Resumable (one training-state file).

Data-parallel under ``torchrun`` / ``accelerate launch``: every process draws the batch a single
process would draw at that step (the same epoch order) and the Gumbel noise of the whole batch
(seeded by the step, one row per sample), then runs its contiguous slice of the rows
(:func:`~reprlab.distributed.shard_bounds`). Every loss is a mean over the batch's rows, so each
process weighs its losses by its share of the rows and the gradients are summed: the step, the
clipping and the logged losses are those of one process on the whole batch."""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import reprlab.distributed as dd
from reprlab.cliutil import finite_fields, require
from reprlab.errors import ConfigError
from reprlab.lenses.schedules import parse_tau, parse_weight
from reprlab.lenses.talk.data import LensData, special_ids
from reprlab.lenses.talk.lens import TalkativeLens, build_module
from reprlab.lenses.talk.losses import combine
from reprlab.lenses.talk.model import TalkModule, gumbel_noise, matching_scale
from reprlab.lenses.talk.prompts import encoder_prompt_ids, prompt_ids, site_layer
from reprlab.lenses.talk.steps import grpo_losses, lm_prefix, step_losses, warm_losses
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites
from reprlab.sweeps.progress import report as report_step
from reprlab.trainstate import (
    check_loss,
    load_train_state,
    read_train_state,
    save_train_state,
)

logger = logging.getLogger(__name__)

TAU_FLOOR = 0.1


RECIPES = ("consistency", "nla")


@dataclass
class TalkConfig:
    """Settings of a talkative-lens run (schedules use :mod:`reprlab.lenses.schedules`; a
    duration ending in ``ep`` counts epochs).

    ``epochs`` sets the run's length (``steps`` > 0 overrides it with a step count); for
    ``nla`` it is the GRPO phase's, after ``warm_epochs`` of warm start."""

    site: str = "layers.2"
    tokens: int = 4
    recipe: str = "consistency"
    epochs: float = 3.0
    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-4
    proj_lr: float = 1e-3
    tau: str = "cosine:1.0:0.5:3ep"
    w_kl: str = "1.0"
    w_mse: str = "1.0"
    w_lm: str = "0.1"
    w_ent: str = "0.0"
    resample_ablation: bool = False
    freeze_decoder: bool = False
    freeze_encoder: bool = False
    rect_projection: bool = False
    scale_match: bool = True
    decoder: str = ""
    prompt: str = "<embed> means"
    encoder_prompt: str = ""
    lm_prefix: str = ""
    encoder_layer: int | None = None
    kv_cache: bool = True
    grad_clip: float = 1.0
    #: where the decoder takes the activation: "" its input embedding at the prompt's marker,
    #: "site" the residual after the block it was read from, or a site name of the decoder
    #: (then the nla warm start quotes the context after the lens's tokens, not before)
    inject: str = ""
    warm_epochs: float = 8.0
    #: nla: the warm-start explanation's first slots quote the last ``warm_context`` tokens of
    #: the text, the rest are the tuned lens's (or file's) tokens (None: half the slots, at
    #: most 2; docs/talk-lens.md measures 0, 2 and 3 at t = 4)
    warm_context: int | None = None
    grpo_samples: int = 4
    kl_ref: float = 0.01
    len_penalty: float = 0.0
    #: nla: reward minus this × the KL (nats) of the model's next token with the
    #: reconstruction spliced in, beside -normalised MSE
    reward_kl: float = 0.0
    eval_rows: int = 256
    curve_rows: int = 256
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        finite_fields(self)
        require(self.tokens >= 1, f"--tokens must be at least 1 (the explanation length), "
                f"got {self.tokens}")
        require(self.tokens <= 32, f"--tokens {self.tokens} is too long; use 1-32")
        require(self.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}, got "
                f"{self.recipe!r}")
        for name in ("batch_size", "checkpoint_every"):
            require(getattr(self, name) >= 1,
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        require(self.steps >= 0, f"--steps must be 0 (use --epochs) or more, got {self.steps}")
        require(math.isfinite(self.epochs) and self.epochs > 0,
                f"--epochs must be positive, got {self.epochs}")
        require(math.isfinite(self.warm_epochs) and self.warm_epochs >= 0,
                f"--warm-epochs must be 0 or more, got {self.warm_epochs}")
        require(0 <= self.context_slots <= self.tokens, f"--warm-context must be 0 to --tokens "
                f"({self.tokens}), got {self.warm_context}")
        require(self.grpo_samples >= 2, f"--grpo-samples must be at least 2 (advantages are "
                f"relative within a group), got {self.grpo_samples}")
        require(self.kl_ref >= 0 and self.len_penalty >= 0 and self.reward_kl >= 0,
                "--kl-ref, --len-penalty and --reward-kl must be 0 or more")
        require(self.lr > 0 and self.proj_lr > 0, "--lr and --proj-lr must be positive")
        require(self.eval_rows >= 1, f"--eval-rows must be at least 1 (the held-out samples "
                f"the metrics are measured on), got {self.eval_rows}")
        require(self.curve_rows >= 0, f"--curve-rows must be 0 or more, got {self.curve_rows}")
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

    @property
    def context_slots(self) -> int:
        """Slots of the nla warm start that quote the context (``warm_context`` resolved)."""
        return min(2, self.tokens // 2) if self.warm_context is None else self.warm_context

    def plan(self, steps_per_epoch: int) -> tuple[int, int]:
        """``(warm-start steps, total steps)`` for epochs of ``steps_per_epoch`` steps."""
        warm = int(math.ceil(self.warm_epochs * steps_per_epoch)) if self.recipe == "nla" else 0
        if self.steps:
            return min(warm, self.steps), self.steps
        return warm, warm + max(1, int(math.ceil(self.epochs * steps_per_epoch)))


def make_spec(lm: LoadedModel, cfg: TalkConfig, activation_norm: float | None = None
              ) -> dict[str, Any]:
    site = resolve_sites(lm, cfg.site)
    require(len(site) == 1, f"--site names {len(site)} sites; give one, e.g. layers.2")
    ids, marker = prompt_ids(lm.tokenizer, cfg.prompt)
    layer = cfg.encoder_layer if cfg.encoder_layer is not None else site_layer(site[0])
    return {"site": site[0].name, "tokens": cfg.tokens, "prompt": cfg.prompt,
            "prompt_ids": ids, "marker": marker,
            "encoder_prompt_ids": encoder_prompt_ids(lm.tokenizer, cfg.encoder_prompt),
            "encoder_layer": layer, "decoder": cfg.decoder or None,
            "freeze_decoder": cfg.freeze_decoder, "freeze_encoder": cfg.freeze_encoder,
            "rect_projection": cfg.rect_projection,
            "scale": _scale(lm, cfg, activation_norm),
            "inject": (site[0].name if cfg.inject == "site" else cfg.inject) or None}


def _scale(lm: LoadedModel, cfg: TalkConfig, activation_norm: float | None) -> float:
    """The injection scale: the power of two nearest the decoder's mean embedding norm over
    the training activations' mean norm (1 without scale matching)."""
    if not cfg.scale_match or activation_norm is None:
        return 1.0
    emb = lm.model.get_input_embeddings().weight.detach().float()
    return matching_scale(activation_norm, float(emb.norm(dim=-1).mean()))


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
               stop_after: int | None = None, world: dd.World | None = None,
               explanations: torch.Tensor | None = None
               ) -> tuple[TalkativeLens, list[dict], dict]:
    """Train on ``data`` (held out: the samples of the last texts, at least
    ``cfg.eval_rows``); returns the lens, the per-step history and run facts (sample split,
    per-epoch curves, rank checksums). ``explanations [N, t]`` (token ids, one row per sample
    of ``data``) feed the ``nla`` warm start."""
    world = world or dd.World()
    if stop_after is None and os.environ.get("REPRLAB_STOP_AFTER"):
        stop_after = int(os.environ["REPRLAB_STOP_AFTER"])
    for p in lm.model.parameters():
        p.requires_grad_(False)
    lm.model.eval()
    if cfg.recipe == "nla":
        if explanations is None:
            raise ConfigError("--recipe nla needs warm-start explanations: pass --tuned RUN "
                              "(a tuned-lens run) or --explanations FILE")
        if tuple(explanations.shape) != (len(data), cfg.tokens):
            raise ConfigError(f"the warm-start explanations are {tuple(explanations.shape)} but "
                              f"the activations need ({len(data)}, {cfg.tokens}): one row of "
                              f"--tokens tokens per sample")
    train_idx, eval_idx = data.split(cfg.eval_rows)
    mean, variance = data.stats(train_idx)
    a_norm = float(data.a[torch.tensor(train_idx)].norm(dim=-1).mean())
    spec = make_spec(lm, cfg, a_norm)
    site = resolve_sites(lm, spec["site"])[0]
    if site.name != data.site:
        raise ConfigError(f"the activations in {data.path} are from {data.site}, not "
                          f"{site.name}; use another --store")
    batch = step_batch(cfg.batch_size, len(train_idx), world.size)
    torch.manual_seed(cfg.seed)
    module = build_module(lm, spec)
    module.eval()  # no dropout: the pair is deterministic given the Gumbel noise
    params = module.trainable()
    dd.broadcast_parameters(params, world)
    opt = _optimizer(module, cfg)
    tau_s, w_s = cfg.schedules()
    steps_per_epoch = max(1, len(train_idx) // batch)
    warm_steps, total = cfg.plan(steps_per_epoch)
    step, history, curves = 0, [], []
    ref_path = None if state_path is None else Path(str(state_path) + ".warm.safetensors")
    ref = None
    if state_path is not None and Path(state_path).exists():
        saved = read_train_state(state_path)  # settings compared before anything is loaded
        if saved is not None and saved[1]["info"].get("config") != asdict(cfg):
            raise ConfigError(f"{state_path} holds a run with other settings; use another "
                              "--out or delete it to start over")
        info = load_train_state(state_path, module, opt, None, rng=False)
        if info is not None:
            step, history = info["step"], info["history"]
            curves = info.get("curves", [])
            logger.info("resuming the talkative lens at step %d", step)
            if cfg.recipe == "nla" and step > warm_steps:
                ref = _load_ref(module, ref_path)
    vocab = module.decoder.get_input_embeddings().weight.shape[0]
    prefix = lm_prefix(lm, cfg.lm_prefix)
    stops = special_ids(lm.tokenizer)
    curve_idx = eval_idx[: cfg.curve_rows]
    bar = tqdm(total=total, initial=step, desc="talkative lens", unit="step",
               disable=not progress or not world.main)
    try:
        while step < total:
            if cfg.recipe == "nla" and step >= warm_steps and ref is None:
                ref = _freeze_ref(module, ref_path if world.main else None)
            epoch, k = divmod(step, steps_per_epoch)
            g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
            order = torch.randperm(len(train_idx), generator=g)
            rows = torch.tensor(train_idx)[order[k * batch:(k + 1) * batch]]
            lo, hi = dd.shard_bounds(len(rows), world.rank, world.size)
            share = (hi - lo) / len(rows)
            idx = rows[lo:hi]
            gn = torch.Generator().manual_seed(cfg.seed * 7919 + step * 104729)
            row: dict[str, Any] = {"step": step + 1, "epoch": epoch}
            if cfg.recipe == "consistency":
                tau = max(TAU_FLOOR, tau_s(step, total, steps_per_epoch))
                weights = {n: s(step, total, steps_per_epoch) for n, s in w_s.items()}
                # the whole batch's noise on every rank (seeded by the step), sliced to its rows
                noise = gumbel_noise((len(rows), cfg.tokens, vocab), gn)[lo:hi]
                noise2 = gumbel_noise((len(rows), cfg.tokens, vocab), gn)[lo:hi] \
                    if cfg.resample_ablation else None
                values, a_hat = step_losses(lm, module, data, idx, cfg, tau, weights, noise,
                                            noise2, site, prefix, variance)
                row["tau"] = tau
                row.update({f"w_{n}": w for n, w in weights.items()})
            elif step < warm_steps:
                weights = {"ce": 1.0, "mse": 1.0}
                values, a_hat = warm_losses(module, data, idx, explanations, variance,
                                            lm.device)
                row["phase"] = "warm"
            else:
                kk = cfg.grpo_samples
                weights = {"pg": 1.0, "kl_ref": cfg.kl_ref, "mse": 1.0}
                noise = gumbel_noise((len(rows) * kk, cfg.tokens, vocab), gn)[lo * kk:hi * kk]
                values, a_hat = grpo_losses(module, ref, data, idx, kk, noise, variance,
                                            cfg.kl_ref, lm.device, cfg.len_penalty, stops,
                                            cfg.reward_kl, lm, site)
                row["phase"] = "grpo"
            total_loss = combine(values, weights)
            opt.zero_grad(set_to_none=True)
            (total_loss * share).backward()  # a mean over rows: the shares' sum is the batch's
            dd.sum_gradients(params, world)  # (one process: share 1, nothing to sum)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            m = _step_metrics(total_loss, values, a_hat, data, idx, share, world, lm.device,
                              mean)
            row.update({"loss": m["loss"], **m})
            check_loss(row["loss"], step, "the talkative lens")
            history.append(row)
            if world.main:
                report_step(step, **{k: v for k, v in row.items()
                                     if k != "step" and not isinstance(v, str)})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", fve=f"{row['fve_batch']:.2f}")
            if curve_idx and (step % steps_per_epoch == 0 or step == total):
                curves.append({"step": step, "epoch": step / steps_per_epoch,
                               **epoch_curve(module, data, curve_idx, mean, cfg.tokens,
                                               cfg.seed)})
                logger.info("epoch %.2f: held-out FVE %.3f (shuffled %.3f, empty %.3f)",
                            curves[-1]["epoch"], curves[-1]["fve"], curves[-1]["fve_shuffled"],
                            curves[-1]["fve_empty"])
            if state_path is not None and world.main and (
                    step % cfg.checkpoint_every == 0 or step == total or step == stop_after):
                save_train_state(state_path, module, opt, None,
                                 {"step": step, "history": history, "curves": curves,
                                  "config": asdict(cfg), "world": world.size},
                                 trainable_only=True, rng=False)
            if stop_after is not None and step == stop_after and step < total:
                dd.barrier(world)
                raise KeyboardInterrupt
    finally:
        bar.close()
    checks = dd.gather_strings(dd.checksum(params), world)
    config = {"spec": spec, "train": asdict(cfg), "model": _model_summary(lm),
              "data": {"path": str(data.path), "samples": len(data)}}
    lens = TalkativeLens.from_module(module, config, mean, variance)
    facts = {"train_samples": len(train_idx), "eval_indices": eval_idx,
             "train_indices_count": len(train_idx), "rank_checksums": checks,
             "world_size": world.size, "steps_per_epoch": steps_per_epoch,
             "warm_steps": warm_steps, "steps": total, "curves": curves,
             "scale": spec["scale"]}
    return lens, history, facts


def _freeze_ref(module: TalkModule, path: Path | None) -> TalkModule:
    """The warm-start decoder GRPO is held to: a frozen copy (saved beside the training state
    so that a resumed run finds it)."""
    ref = copy.deepcopy(module)
    for p in ref.parameters():
        p.requires_grad_(False)
    if path is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().clone() for k, v in ref.state_dict().items()},
                  str(path))
    return ref


def _load_ref(module: TalkModule, path: Path | None) -> TalkModule:
    from safetensors.torch import load_file

    if path is None or not path.exists():
        raise ConfigError(f"the saved run is past its warm start but {path} is missing; "
                          "delete the training state to start over")
    ref = copy.deepcopy(module)
    ref.load_state_dict(load_file(str(path)))
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def epoch_curve(module: TalkModule, data: LensData, idx: list[int], mean: torch.Tensor,
                t: int, seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Held-out FVE of the lens (greedy), of its tokens shuffled and of the empty explanation
    on samples ``idx`` (the learning curve's points)."""
    from reprlab.lenses.metrics import fve
    from reprlab.lenses.talk.evaluate import shuffled

    g = torch.Generator().manual_seed(seed)
    dev = next(module.parameters()).device
    outs: dict[str, list[torch.Tensor]] = {"a": [], "lens": [], "shuffled": [], "empty": []}
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            b = torch.tensor(idx[s:s + batch_size])
            a = data.a[b].to(dev)
            ids = module.generate(a, t, 1.0, None).ids
            outs["a"].append(a.cpu())
            outs["lens"].append(module.encode(ids).cpu())
            outs["shuffled"].append(module.encode(shuffled(ids.cpu(), g).to(dev)).cpu())
            outs["empty"].append(module.encode(ids[:, :0]).cpu())
    cat = {k: torch.cat(v) for k, v in outs.items()}
    return {"fve": float(fve(cat["lens"], cat["a"], mean)),
            "fve_shuffled": float(fve(cat["shuffled"], cat["a"], mean)),
            "fve_empty": float(fve(cat["empty"], cat["a"], mean))}


def _step_metrics(total: torch.Tensor, values: dict[str, torch.Tensor], a_hat: torch.Tensor,
                  data: LensData, idx: torch.Tensor, share: float, world: dd.World,
                  device: Any, mean: torch.Tensor) -> dict[str, float]:
    """The whole batch's loss, per-loss values and FVE: share-weighted losses and the FVE's
    two sums added over processes (one all-reduce)."""
    a = data.a[idx].double()
    err = float(((a_hat.detach().cpu().double() - a) ** 2).sum())
    spread = float(((a - mean.double()) ** 2).sum())
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
