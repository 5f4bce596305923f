"""One small interface through which training workflows report a metric per step or epoch.

A workflow calls :func:`report` once per step (cheap, and a no-op when nobody listens)::

    from reprlab.sweeps.progress import report
    for step in range(steps):
        ...
        report(step, loss=loss.item(), val_acc=acc)

(with ``if active():`` around metrics that cost a device sync to compute).

Listeners ("sinks") hang off it: the JSONL metrics log of a run (:class:`JsonlSink`), the
W&B and MLflow trackers, and a sweep's pruner, which may stop a bad trial by raising
:class:`TrialPruned` out of :func:`report`. A workflow need not catch it: the sweep does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Sink = Callable[[int, dict[str, float]], None]
_SINKS: list[Sink] = []


class TrialPruned(Exception):  # noqa: N818 - the name users know from Optuna
    """Raised from :func:`report` when a sweep's pruner stops the running trial early."""

    def __init__(self, step: int, value: float | None = None):
        super().__init__(f"pruned at step {step}")
        self.step = step
        self.value = value


def active() -> bool:
    """Whether any sink listens: guard metrics that cost something to compute (a device
    sync, a reduction) with it, so that nothing is spent when nobody listens."""
    return bool(_SINKS)


def report(step: int, **metrics: float) -> None:
    """Report ``metrics`` (name -> number) at ``step`` to every listening sink."""
    if not _SINKS:
        return
    clean = {}
    for k, v in metrics.items():
        try:
            clean[k] = float(v)
        except (TypeError, ValueError):
            continue
    for sink in list(_SINKS):
        sink(int(step), clean)


@contextmanager
def listening(*sinks: Sink) -> Iterator[None]:
    """Attach ``sinks`` to :func:`report` for the duration of the block (nested blocks add)."""
    _SINKS.extend(sinks)
    try:
        yield
    finally:
        for s in sinks:
            _SINKS.remove(s)


class JsonlSink:
    """Append one JSON line ``{"step": s, "time": t, name: value, ...}`` per report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics log (a torn last line from a killed run is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


__all__ = ["JsonlSink", "TrialPruned", "active", "listening", "read_jsonl", "report"]
