"""The toy model's training loop: plain torch over pre-tokenised, length-bucketed batches.

Both phases (pretraining on world text, SFT on chat examples) run through :func:`run_phase`,
which is deterministic from the seed and the step: the batches of step ``s`` are a function
of ``(seed, phase, s)`` alone, so a resumed run sees exactly the batches an uninterrupted one
would. State (weights, AdamW, schedule, RNG, position) is committed as one file every
``save_every`` steps through :mod:`reprlab.trainstate`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """Token ids and the index of the first token that carries loss."""

    ids: tuple[int, ...]
    loss_from: int = 1


def encode_texts(tokenizer, texts: Sequence[str]) -> list[Example]:
    """Pretraining examples: ``<|bos|> text <|end|>``, loss on every token after bos."""
    eos = tokenizer.eos_token_id
    enc = tokenizer(list(texts))["input_ids"]
    return [Example(tuple(ids) + (eos,), 1) for ids in enc]


def encode_chats(tokenizer, rows: Sequence[tuple[str, str]]) -> list[Example]:
    """SFT examples from (question, answer): loss only on the answer and its ``<|end|>``."""
    out = []
    for q, a in rows:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                               add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(" " + a + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        out.append(Example(tuple(p_ids + a_ids), len(p_ids)))
    return out


def batches_for_epoch(n: int, lengths: Sequence[int], batch_size: int, seed: int, phase: str,
                      epoch: int, bucket: int = 16) -> list[list[int]]:
    """Index batches of one epoch: shuffled, then sorted by length within windows of
    ``bucket`` batches (less padding), then the batch order shuffled again."""
    rng = random.Random(f"{seed}:{phase}:{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * bucket
    batches = []
    for w in range(0, n, window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size] or batches


def collate(examples: Sequence[Example], idx: Sequence[int], pad_id: int) -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` for one batch."""
    rows = [examples[i] for i in idx]
    t = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for k, r in enumerate(rows):
        n = len(r.ids)
        ids[k, :n] = torch.tensor(r.ids)
        mask[k, :n] = 1
        labels[k, r.loss_from:n] = ids[k, r.loss_from:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class StepBatches:
    """Step -> batch, deterministic; epochs are regenerated on demand."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, phase: str,
                 pad_id: int):
        self.examples, self.batch_size, self.seed, self.phase = examples, batch_size, seed, phase
        self.pad_id = pad_id
        self.lengths = [len(e.ids) for e in examples]
        self._epoch, self._batches = -1, []
        self.per_epoch = len(batches_for_epoch(len(examples), self.lengths, batch_size, seed,
                                               phase, 0))

    def __call__(self, step: int) -> dict:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = batches_for_epoch(len(self.examples), self.lengths,
                                              self.batch_size, self.seed, self.phase, epoch)
        return collate(self.examples, self._batches[k], self.pad_id)


def make_optimizer(model: nn.Module, lr: float, steps: int, warmup: int, weight_decay: float):
    """AdamW (no decay on norms and biases) with linear warm-up and cosine decay to 10%."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def run_phase(model: nn.Module, batches: Callable[[int], dict], opt, sched, *, start: int,
              steps: int, on_step: Callable[[int, float, int], None] | None = None,
              clip: float = 1.0, device: torch.device | None = None) -> float:
    """Train from ``start`` to ``steps``; ``on_step(step_done, loss, tokens)`` after each step.

    Returns the mean loss of the last 20 steps.
    """
    model.train()
    device = device or next(model.parameters()).device
    recent: list[float] = []
    for step in range(start, steps):
        batch = {k: v.to(device) for k, v in batches(step).items()}
        out = model(**batch)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        recent = (recent + [loss])[-20:]
        if on_step is not None:
            on_step(step + 1, loss, int(batch["attention_mask"].sum()))
    model.eval()
    return sum(recent) / len(recent) if recent else float("nan")


class Throughput:
    """Tokens per second over the steps seen so far (for the progress bar and manifest)."""

    def __init__(self) -> None:
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.tokens += n

    @property
    def rate(self) -> float:
        return self.tokens / max(1e-9, time.perf_counter() - self.t0)
