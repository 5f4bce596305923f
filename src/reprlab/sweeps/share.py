"""Trials that capture the same activations share one store.

A workflow that keeps its stores under ``<out>/stores/`` (probe does) gets that folder as a
link to ``<sweep>/stores/<key>/``, where ``key`` hashes the options that decide what is
captured (model, data, sites, positions, ...). The first trial with a key builds the store
while holding a file lock; the others wait on the lock and then hit the capture cache (the
store's request id still guards against any mismatch, so a wrong key can only cost a
rebuild error, never wrong numbers).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: subcommand words -> options that decide the captured activations (all others may vary
#: between trials that share a store)
CAPTURE_OPTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("probe",): ("model", "data", "sites", "positions", "eval", "test", "store", "limit",
                 "max_length", "text_col", "label_col", "model_dtype", "device", "batch_size",
                 "backend", "remote"),
}

READY = ".ready"


def capture_key(words: tuple[str, ...], ns: argparse.Namespace) -> str | None:
    """A short hash naming the capture a trial makes, or None when ``words`` has no entry."""
    opts = CAPTURE_OPTIONS.get(tuple(words))
    if opts is None or getattr(ns, "backend", "store") not in ("store", None):
        return None
    payload = {"command": list(words), **{o: getattr(ns, o, None) for o in opts}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stores_complete(base: Path) -> bool:
    return all((p / "manifest.json").exists() for p in base.iterdir() if p.is_dir())


@contextmanager
def shared_stores(run_dir: Path, sweep_dir: Path, key: str) -> Iterator[dict]:
    """Link ``run_dir/stores`` to the shared folder for ``key`` and hold the build lock if
    the stores are not built yet. Yields ``{"capture": "built" | "reused" | "none", "key":
    key}``; the caller's trial runs inside the block and sets ``"ok"`` when it succeeded (only
    then are the stores marked ready for the others)."""
    base = sweep_dir / "stores" / key
    base.mkdir(parents=True, exist_ok=True)
    link = run_dir / "stores"
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else None
    if not link.exists():
        link.symlink_to(base.resolve(), target_is_directory=True)
    info = {"capture": "reused", "key": key}
    ready = base / READY
    if ready.exists():
        yield info
        return
    with open(base.parent / f"{key}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # blocks while another trial builds these stores
        try:
            if ready.exists():
                fcntl.flock(fh, fcntl.LOCK_UN)
                yield info
                return
            before = {p.name for p in base.iterdir() if p.is_dir()}
            info["capture"] = "built"
            yield info  # the caller sets info["ok"] when its trial succeeded
            if not {p.name for p in base.iterdir() if p.is_dir()} - before:
                info["capture"] = "none"  # e.g. --store given: nothing to build here
            if info.get("ok") and _stores_complete(base):
                ready.write_text("ok\n")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


__all__ = ["CAPTURE_OPTIONS", "capture_key", "shared_stores"]
