"""Timing helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
