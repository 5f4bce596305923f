"""Schedules for loss weights and the Gumbel temperature, parsed from short strings.

Grammar (durations are steps, or epochs with an ``ep`` suffix; an omitted duration is the
whole run)::

    0.5                     constant 0.5
    constant:0.5            the same
    warmup:1.0:100          linear from 0 to 1.0 over 100 steps, then 1.0
    linear:1.0:0.1:2ep      linear from 1.0 to 0.1 over two epochs, then 0.1
    cosine:1.0:0.1          cosine from 1.0 to 0.1 over the whole run
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from reprlab.errors import ConfigError

_HELP = ("use a number, constant:V, warmup:V[:N], linear:A:B[:N] or cosine:A:B[:N] with N "
         "steps or Nep epochs")


def _linear(a: float, b: float, x: float) -> float:
    return a + (b - a) * x


def _cosine(a: float, b: float, x: float) -> float:
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * x))


#: shape name -> f(start, end, progress in [0, 1])
SHAPES: dict[str, Callable[[float, float, float], float]] = {
    "constant": lambda a, b, x: a,
    "warmup": _linear,
    "linear": _linear,
    "cosine": _cosine,
}


@dataclass(frozen=True)
class Schedule:
    """A value per step: ``shape`` from ``start`` to ``end`` over ``duration`` steps/epochs."""

    shape: str
    start: float
    end: float
    duration: float | None = None
    in_epochs: bool = False
    text: str = ""

    def steps(self, total_steps: int, steps_per_epoch: int) -> int:
        if self.duration is None:
            return max(1, total_steps)
        return max(1, int(round(self.duration * (steps_per_epoch if self.in_epochs else 1))))

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int = 1) -> float:
        n = self.steps(total_steps, steps_per_epoch)
        x = min(1.0, max(0.0, step / n))
        return SHAPES[self.shape](self.start, self.end, x)

    @property
    def minimum(self) -> float:
        return min(self.start, self.end)


def parse_schedule(text: str | float, name: str = "schedule") -> Schedule:
    """Parse the grammar above; one clear error for anything else (NaN and infinity too)."""
    s = _parse(text, name)
    if not all(math.isfinite(v) for v in (s.start, s.end, s.duration or 0.0)):
        raise ConfigError(f"{name} {s.text!r} must be made of finite numbers; {_HELP}")
    return s


def _parse(text: str | float, name: str) -> Schedule:
    if isinstance(text, (int, float)):
        return Schedule("constant", float(text), float(text), text=str(text))
    raw = str(text).strip()
    parts = raw.split(":")
    try:
        if len(parts) == 1:
            v = float(parts[0])
            return Schedule("constant", v, v, text=raw)
        shape, args = parts[0], parts[1:]
        if shape not in SHAPES:
            raise ConfigError(f"unknown {name} shape {shape!r} in {raw!r}; {_HELP}")
        if shape == "constant":
            if len(args) != 1:
                raise ValueError
            v = float(args[0])
            return Schedule("constant", v, v, text=raw)
        if shape == "warmup":
            if len(args) not in (1, 2):
                raise ValueError
            start, end, rest = 0.0, float(args[0]), args[1:]
        else:
            if len(args) not in (2, 3):
                raise ValueError
            start, end, rest = float(args[0]), float(args[1]), args[2:]
        duration, epochs = None, False
        if rest:
            d = rest[0].strip()
            epochs = d.endswith("ep")
            duration = float(d[:-2] if epochs else d)
            if duration <= 0:
                raise ConfigError(f"the duration in {name} {raw!r} must be positive")
        return Schedule(shape, start, end, duration, epochs, raw)
    except ValueError:
        raise ConfigError(f"cannot read {name} {raw!r}; {_HELP}") from None


def parse_tau(text: str, floor: float = 0.1) -> Schedule:
    """A temperature schedule: refuses any value below 0 (the trainer floors it at ``floor``)."""
    s = parse_schedule(text, "--tau")
    if s.minimum < 0:
        raise ConfigError(f"--tau {text!r} goes below 0 (to {s.minimum}); a Gumbel temperature "
                          f"must stay positive (values under {floor} are floored at {floor})")
    return s


def parse_weight(text: str, name: str) -> Schedule:
    s = parse_schedule(text, name)
    if s.minimum < 0:
        raise ConfigError(f"{name} {text!r} goes below 0; loss weights must be 0 or more")
    return s
