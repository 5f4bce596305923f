"""Fit a tuned lens (KL(final ‖ lens) summed over layers, a tokens-per-step budget, SGD with
Nesterov momentum or Adam, resumable). The loop returns the translators; :mod:`.fit` wraps
them in a :class:`~reprlab.lenses.tuned.lens.TunedLens`.

Data-parallel under ``torchrun`` / ``accelerate launch`` (:mod:`reprlab.distributed`): every
process walks the same order of texts and the same micro-batches of ``batch_size`` texts, and
encodes and runs only its contiguous slice of each (:func:`~reprlab.distributed.shard_bounds`).
The token budget of a step is counted over all processes (one small all-reduce per
micro-batch), so each takes the same micro-batches a single process would. The loss is a sum
over tokens divided by the constant ``tokens_per_step``, so the gradients summed over processes
are one process's gradient, and the logged KL and tokens are those of the whole step. The
translators start as rank 0's; rank 0 alone writes the training state.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import reprlab.distributed as dd
from reprlab.cliutil import finite_fields
from reprlab.errors import ConfigError, DataError
from reprlab.lenses.metrics import (
    LN2,
    kl_from_logp,
)
from reprlab.lenses.tuned.translators import Translators
from reprlab.lenses.unembed import forward_states, layer_names, unembed
from reprlab.models import LoadedModel
from reprlab.sweeps.progress import report as report_step
from reprlab.trainstate import (
    check_loss,
    load_train_state,
    read_train_state,
    save_train_state,
)

logger = logging.getLogger(__name__)

OPTIMIZERS = {
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                                  weight_decay=wd),
    "adam": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
}
DEFAULT_LR = {"sgd": 1.0, "adam": 1e-3}


@dataclass
class TunedTrainConfig:
    """How to fit a tuned lens (defaults sized for a CPU; the paper used 250 x 2^18 tokens)."""

    steps: int = 100
    tokens_per_step: int = 4096
    batch_size: int = 8
    max_length: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 1e-3
    warmup_frac: float = 0.1
    seed: int = 0
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        finite_fields(self)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use {', '.join(OPTIMIZERS)}")
        for name in ("steps", "tokens_per_step", "batch_size", "max_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, "
                                  f"got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"--warmup-frac must lie in [0, 1), got {self.warmup_frac}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


def tuned_loss(lm: LoadedModel, translators: Translators, states: list[torch.Tensor],
               final_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over layers (but the last) of Σ over real tokens of KL(final ‖ lens), in nats."""
    logp = torch.log_softmax(final_logits.detach().float(), dim=-1)
    p = logp.exp()
    m = mask.to(logp.dtype)
    total = logp.new_zeros(())
    for layer, h in enumerate(states[:-1]):
        lens_logits = unembed(lm, translators(h.detach(), layer))
        total = total + (kl_from_logp(logp, p, lens_logits) * m).sum()
    return total


def _lr_lambda(steps: int, warmup_frac: float):
    warm = max(1, int(round(steps * warmup_frac))) if warmup_frac > 0 else 0

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _freeze(lm: LoadedModel) -> None:
    for p in lm.model.parameters():
        p.requires_grad_(False)


def _micro_batch(lm: LoadedModel, translators: Translators, texts: list[str],
                 cfg: TunedTrainConfig) -> tuple[int, float]:
    """Forward and backward of one (shard of a) micro-batch: its real tokens and its KL sum
    in nats (nothing to do for an empty shard)."""
    if not texts:
        return 0, 0.0
    batch = lm.encode(texts, padding_side="right", max_length=cfg.max_length)
    states, final = forward_states(lm, batch)
    mask = batch["attention_mask"]
    loss = tuned_loss(lm, translators, states, final, mask)
    (loss / cfg.tokens_per_step).backward()
    return int(mask.sum()), float(loss.detach())


def fit_translators(lm: LoadedModel, texts: list[str], cfg: TunedTrainConfig | None = None,
                    *, state_path: str | Path | None = None, progress: bool = True,
                    stop_after: int | None = None, world: dd.World | None = None
                    ) -> tuple[Translators, list[dict], TunedTrainConfig]:
    """Fit translators on ``texts``; returns them (on the CPU), the loss history per step and
    the settings used.

    With ``state_path`` the run checkpoints every ``cfg.checkpoint_every`` steps and resumes
    from the file when it exists. ``stop_after`` (a test aid; also ``REPRLAB_STOP_AFTER``)
    interrupts the run after that step's checkpoint. With a ``world`` of several processes
    (:func:`reprlab.distributed.init_from_env`) every rank calls this with the same texts and
    settings; each runs its slice of every micro-batch, all return the same translators and history,
    and only rank 0 writes ``state_path``.
    """
    cfg = cfg or TunedTrainConfig()
    world = world or dd.World()
    if not texts:
        raise DataError("no texts to train the tuned lens on; pass a dataset with text rows")
    if stop_after is None and os.environ.get("REPRLAB_STOP_AFTER"):
        stop_after = int(os.environ["REPRLAB_STOP_AFTER"])
    _freeze(lm)
    lm.model.eval()
    n_layers = len(layer_names(lm))
    torch.manual_seed(cfg.seed)
    translators = Translators(n_layers, lm.arch.hidden_size).to(lm.device)
    opt = OPTIMIZERS[cfg.optimizer](translators.parameters(), cfg.learning_rate,
                                    cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.steps, cfg.warmup_frac))
    step, epoch, cursor, history = 0, 0, 0, []
    if state_path is not None:
        saved = read_train_state(state_path)  # settings compared before anything is loaded
        if saved is not None and saved[1]["info"].get("config") != asdict(cfg):
            raise ConfigError(f"{state_path} holds a run with other settings; use another "
                              "--out or delete it to start over")
        info = load_train_state(state_path, translators, opt, sched)
        if info is not None:
            step, epoch, cursor = info["step"], info["epoch"], info["cursor"]
            history = info["history"]
            logger.info("resuming the tuned lens at step %d", step)
    params = list(translators.parameters())
    dd.broadcast_parameters(params, world)
    dd.barrier(world)  # every rank has read the saved state before rank 0 writes it again

    def order(ep: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + ep)
        return torch.randperm(len(texts), generator=g).tolist()

    perm = order(epoch)
    bar = tqdm(total=cfg.steps, initial=step, desc="tuned lens", unit="step",
               disable=not progress or not world.main)
    try:
        while step < cfg.steps:
            opt.zero_grad(set_to_none=True)
            tokens, loss_sum = 0, 0.0
            while tokens < cfg.tokens_per_step:
                if cursor >= len(perm):
                    epoch, cursor = epoch + 1, 0
                    perm = order(epoch)
                idx = perm[cursor:cursor + cfg.batch_size]
                cursor += len(idx)
                lo, hi = dd.shard_bounds(len(idx), world.rank, world.size)
                n, kl = _micro_batch(lm, translators, [texts[i] for i in idx[lo:hi]], cfg)
                # the budget counts every process's tokens, so all take the same micro-batches
                tokens += int(round(dd.all_sum(n, world, lm.device)))
                loss_sum += kl
            dd.sum_gradients(params, world)  # (no-ops in one process)
            loss_sum = dd.all_sum(loss_sum, world, lm.device)
            opt.step()
            sched.step()
            step += 1
            history.append({"step": step, "kl_sum_bits": loss_sum / tokens / LN2,
                            "tokens": tokens, "lr": sched.get_last_lr()[0]})
            check_loss(history[-1]["kl_sum_bits"], step, "the tuned lens")
            if world.main:
                report_step(step, **{k: v for k, v in history[-1].items() if k != "step"})
            bar.update(1)
            bar.set_postfix(kl=f"{history[-1]['kl_sum_bits']:.3f}")
            if state_path is not None and world.main and (
                    step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after):
                save_train_state(state_path, translators, opt, sched,
                                 {"step": step, "epoch": epoch, "cursor": cursor,
                                  "history": history, "config": asdict(cfg)})
            if stop_after is not None and step == stop_after and step < cfg.steps:
                dd.barrier(world)
                raise KeyboardInterrupt
    finally:
        bar.close()
    return translators.cpu(), history, cfg
