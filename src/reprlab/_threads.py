"""Scoped torch thread counts: library calls must not change the caller's global setting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` intra-op threads (``None``/0: leave as is), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
