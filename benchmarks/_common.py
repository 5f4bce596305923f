"""Timing helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5,
            warmup: int = 1) -> dict[str, float]:
    """Median wall times of several functions, run in rotation so that load on a shared
    machine affects all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of very different lengths (3 to ~150 tokens), in a shuffled order."""
    import random

    rng = random.Random(seed)
    words = ("the city of Paris is in France and many people travel there every year to see "
             "museums rivers bridges old streets markets gardens while others prefer quiet "
             "villages mountains lakes forests trains cheese wine bread history art").split()
    out = []
    for _ in range(n):
        k = rng.choice([3, 5, 8, 12, 20, 40, 80, 140])
        k = max(2, int(k * rng.uniform(0.7, 1.3)))
        out.append(" ".join(rng.choice(words) for _ in range(k)).capitalize() + ".")
    return out


#: seconds of idleness before each timed run: BLAS and OpenMP worker threads keep spinning
#: for a while after a multi-threaded call (OpenBLAS ~0.1 s), and that CPU would otherwise
#: be charged to whichever variant runs next (it added ~0.1 CPU s to a 0.13 s probe fit)
SETTLE = 0.5


def rotate(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
           setups: dict[str, Callable[[], contextlib.AbstractContextManager]] | None = None
           ) -> dict[str, dict[str, float]]:
    """Time several variants in rotation (one run of each in turn, ``repeats`` rounds) and
    return, per variant, the medians of CPU time (``time.process_time``: every thread of this
    process) and wall time, plus the load average seen during its runs. ``setups[name]()``
    gives a context (e.g. a thread count) entered around each run of that variant only."""
    setups = setups or {}
    none = contextlib.nullcontext

    def once(name: str) -> tuple[float, float, float]:
        time.sleep(SETTLE)
        with setups.get(name, none)():
            c0, w0 = time.process_time(), time.perf_counter()
            fns[name]()
            c1, w1 = time.process_time(), time.perf_counter()
        return c1 - c0, w1 - w0, os.getloadavg()[0]

    for _ in range(warmup):
        for name in fns:
            once(name)
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name in fns:
            runs[name].append(once(name))
    return {k: {"cpu": statistics.median(r[0] for r in v), "wall": statistics.median(r[1] for r in v),
                "load": statistics.median(r[2] for r in v), "runs": len(v)}
            for k, v in runs.items()}


#: thread counts reprlab's policy chose (``for_work``) for the work run under ``threads(None)``
POLICY_CHOICES: collections.Counter = collections.Counter()


@contextlib.contextmanager
def _recording_policy() -> Iterator[None]:
    from reprlab import _threads

    real = _threads.for_work

    @contextlib.contextmanager
    def recorded(kind, flops=None, threads=None):
        with real(kind, flops, threads) as n:
            POLICY_CHOICES[n] += 1
            yield n

    _threads.for_work = recorded
    try:
        yield
    finally:
        _threads.for_work = real


def policy_summary() -> str:
    """What the policy chose since the last call (``"1 thread for 40 of 52 forwards, ..."``),
    then forget it."""
    total = sum(POLICY_CHOICES.values())
    if not total:
        return "reprlab's policy chose nothing (no reprlab forward ran under the default)"
    parts = [f"{n} thread{'s' if n > 1 else ''} for {c} of {total}"
             for n, c in sorted(POLICY_CHOICES.items())]
    POLICY_CHOICES.clear()
    return "reprlab's policy at the default: " + ", ".join(parts) + " scoped forwards"


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Both sides at ``n`` threads: torch (reprlab's policy via ``set_threads``; ``None``
    leaves reprlab's own choice, recorded in :data:`POLICY_CHOICES`) and every BLAS / OpenMP
    pool (threadpoolctl) that scikit-learn, NumPy and POT use."""
    import torch
    from threadpoolctl import threadpool_limits

    from reprlab import _threads

    before = torch.get_num_threads()
    _threads.set_threads(n)
    if n:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n) if n else _recording_policy():
            yield
    finally:
        _threads.set_threads(None)
        torch.set_num_threads(before)


def machine() -> str:
    """One line: CPU, cores, load average, library versions."""
    import torch

    vers = [f"torch {torch.__version__}"]
    for mod in ("sklearn", "ot", "nnsight", "transformers", "steering_vectors"):
        try:
            m = __import__(mod)
            vers.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            pass
    la = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}; " + ", ".join(vers))


def table(rows: list[tuple[str, dict[str, float]]], ref: str | None = None) -> str:
    """Rows of ``(name, rotate() entry)`` as text with CPU / wall medians and ratios to
    ``ref`` (the row whose time is 1)."""
    base = dict(rows).get(ref) if ref else None
    out = [f"  {'variant':<46}{'cpu s':>9}{'wall s':>9}{'load':>6}"
           + (f"{'cpu ratio':>11}{'wall ratio':>11}" if base else "")]
    for name, t in rows:
        line = f"  {name:<46}{t['cpu']:>9.3f}{t['wall']:>9.3f}{t['load']:>6.1f}"
        if base:
            line += f"{t['cpu'] / base['cpu']:>10.2f}x{t['wall'] / base['wall']:>10.2f}x"
        out.append(line)
    return "\n".join(out)
