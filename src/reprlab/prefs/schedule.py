"""Learning-rate schedules (warm-up then constant, linear or cosine decay) as LambdaLR."""

from __future__ import annotations

import math

import torch

from reprlab.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine")


def lr_lambda(kind: str, warmup: int, total: int):
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown --schedule {kind!r}; use one of {', '.join(SCHEDULES)}")

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        span = max(1, total - warmup)
        frac = min(1.0, (step - warmup) / span)
        return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return f


def make_scheduler(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(kind, warmup, total))
