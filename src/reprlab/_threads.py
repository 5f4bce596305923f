"""Torch thread counts chosen per workload, scoped so that the caller's setting survives.

Policy (:func:`choose`): many small batched operations (probe fits on a few hundred
dimensions, Sinkhorn iterations, small models) run on **one** thread, where extra threads
only add synchronisation and, on a busy machine, lose several-fold to oversubscription; an
operation large enough to keep several cores busy (a big matrix product or
eigendecomposition) gets the cores that the load average says are free of other jobs
(:func:`free_cores`).

Users override it, in this order of precedence:

- an explicit count passed to a library call (``threads=`` / ``--threads``);
- :func:`set_threads` (``reprlab._threads.set_threads(4)``; ``None`` clears it);
- the environment variable ``REPRLAB_THREADS`` (a count, or ``auto`` for the policy).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "REPRLAB_THREADS"

#: floating-point operations per call from which a kind of work is worth several threads
LARGE_WORK: dict[str, float] = {
    "matmul": 2e8,  # one batched product; below this it runs in well under a millisecond
    "eigh": 3e10,  # LAPACK's symmetric eigensolver scales poorly below d ~ 2,000
}

_override: int | None = None


def set_threads(n: int | None) -> None:
    """Process-wide thread count for every library call that chooses its own (``None``:
    back to the policy / environment)."""
    global _override
    if n is not None and int(n) < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    _override = None if n is None else int(n)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configured() -> int | None:
    """The user's override (:func:`set_threads`, then ``REPRLAB_THREADS``), if any."""
    if _override is not None:
        return _override
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in ("", "auto", "0"):
        return None
    try:
        n = int(raw)
    except ValueError:
        logger.warning("ignoring %s=%r: expected a thread count or 'auto'", ENV_VAR, raw)
        return None
    return max(1, n)


_own = {"t": time.monotonic(), "cpu": time.process_time(), "avg": 1.0}


def own_load() -> float:
    """This process's own part of the 1-minute load average: its CPU rate (all its threads),
    averaged over about a minute as the kernel's load average is; at least 1, the thread
    asking. Without it, a process that has just run on two threads would read its own load
    as another job's and drop to one thread."""
    now, cpu = time.monotonic(), time.process_time()
    dt = now - _own["t"]
    if dt >= 0.5:
        w = math.exp(-dt / 60.0)
        _own["avg"] = w * _own["avg"] + (1.0 - w) * (cpu - _own["cpu"]) / dt
        _own.update(t=now, cpu=cpu)
    return max(1.0, _own["avg"])


def free_cores() -> int:
    """Cores the 1-minute load average leaves free to this process (its own load counted
    as its own: :func:`own_load`)."""
    n = cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return n
    return max(1, min(n, int(n - load + own_load() + 0.5)))


def choose(kind: str = "small", flops: float | None = None) -> int:
    """Thread count for one piece of work: the user's override if set, else one thread
    unless ``flops`` (per call) reaches ``LARGE_WORK[kind]``, then the free cores."""
    forced = configured()
    if forced is not None:
        return forced
    limit = LARGE_WORK.get(kind)
    if limit is None or flops is None or flops < limit:
        return 1
    return free_cores()


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` intra-op threads (``None``/0: the policy's choice for small
    batched work, i.e. the user's override or one thread), then restore."""
    want = int(n) if n else choose()
    before = torch.get_num_threads()
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def for_work(kind: str, flops: float | None = None, threads: int | None = None
             ) -> Iterator[int]:
    """Scope the body with :func:`choose`'s count for this work (or ``threads`` when
    given); yields the count."""
    n = int(threads) if threads else choose(kind, flops)
    with num_threads(n):
        yield n


def forward_flops(model: Any, tokens: int) -> float:
    """Floating-point operations of the largest linear product in one forward of ``model`` on
    ``tokens`` tokens (batch x padded length): ``2 x tokens x hidden x intermediate``, the MLP's
    up projection, which dominates a transformer block's cost. ``model`` is a hidden size, a
    :class:`~reprlab.models.LoadedModel` or a Hugging Face model; the intermediate width comes
    from its config (``intermediate_size`` / ``n_inner`` / ``ffn_dim``), else ``4 x hidden``."""
    if isinstance(model, int):
        hidden, inter = model, None
    else:
        module = getattr(model, "model", model)  # a LoadedModel wraps the HF module
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config()
        arch = getattr(model, "arch", None)
        hidden = (getattr(arch, "hidden_size", None) or getattr(cfg, "hidden_size", None)
                  or getattr(cfg, "n_embd", None) or 0)
        inter = next((v for v in (getattr(cfg, k, None) for k in
                                  ("intermediate_size", "n_inner", "ffn_dim"))
                      if isinstance(v, int) and v > 0), None)
    hidden = int(hidden)
    return 2.0 * max(0, int(tokens)) * hidden * (inter or 4 * hidden)


@contextlib.contextmanager
def for_forward(model: Any, tokens: int, threads: int | None = None) -> Iterator[int]:
    """Scope a model forward on ``tokens`` tokens with the policy's count for its largest
    linear product (:func:`forward_flops`, kind ``"matmul"``), or ``threads`` when given;
    yields the count. Small batches on small models run on one thread."""
    with for_work("matmul", forward_flops(model, tokens), threads) as n:
        yield n
