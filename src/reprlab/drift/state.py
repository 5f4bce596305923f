"""Resumable training state of a tracked run: one file, committed atomically.

A tracked run keeps, under ``<out>/track/``: ``state.safetensors`` (model weights,
optimiser and scheduler state, RNG states and the position in training, all in ONE safetensors
file written through :func:`reprlab.trainstate.save_train_state` and renamed into place),
``history.json`` (metrics per checkpoint) and one cloud file per checkpoint
(``clouds/step-0000100.safetensors`` or a full activation store under ``stores/``).

Order of writes at a checkpoint: clouds, history, state. The state is the commit: a crash
before it leaves the previous state, and resuming drops history entries newer than that state
and recomputes them, so a resumed run equals an uninterrupted one.

Runs written before the one-file state (weights in ``state.safetensors``, the position in
``state.json``) are still read; the next checkpoint replaces them with the one-file state (whose
header carries the JSON, so a ``state.safetensors`` with that header is never mistaken for the
old pair, even beside a stale ``state.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprlab.errors import StoreError
from reprlab.io import read_json
from reprlab.trainstate import load_optimizer, load_train_state, save_train_state

logger = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
_LEGACY_JSON = "state.json"


def state_path(directory: Path) -> Path:
    return Path(directory) / STATE_FILE


def save_state(directory: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
               info: dict) -> None:
    """Commit weights, optimiser, scheduler, RNG and ``info`` as one file (atomic rename)."""
    directory = Path(directory)
    save_train_state(state_path(directory), model, opt, sched, info)
    (directory / _LEGACY_JSON).unlink(missing_ok=True)  # the one-file state supersedes it


def load_state(directory: Path, model: nn.Module, opt: torch.optim.Optimizer,
               sched: Any) -> dict | None:
    """Restore a saved state; ``None`` when there is none. Returns the saved ``info``."""
    directory = Path(directory)
    path = state_path(directory)
    for tmp in directory.glob(f".{STATE_FILE}.*.tmp"):  # a save killed before its rename
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    if not _is_one_file(path) and (directory / _LEGACY_JSON).exists():
        return _load_legacy(directory, model, opt, sched)
    info = load_train_state(path, model, opt, sched)
    if info is not None:
        info.pop("_tensors", None)
    return info


def _is_one_file(path: Path) -> bool:
    from safetensors import safe_open

    from reprlab.trainstate import _META_KEY

    try:
        with safe_open(str(path), framework="pt") as fh:
            return _META_KEY in (fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: let load_train_state say so
        return True


def clear_state(directory: Path) -> None:
    """Remove any saved state (one-file or legacy) from ``directory``."""
    for name in (STATE_FILE, _LEGACY_JSON):
        (Path(directory) / name).unlink(missing_ok=True)


def _load_legacy(directory: Path, model: nn.Module, opt: torch.optim.Optimizer,
                 sched: Any) -> dict:
    from safetensors.torch import load_file

    logger.warning("%s holds a training state in the old two-file layout; resuming from it "
                   "(the next checkpoint writes the one-file state)", directory)
    try:
        info = read_json(directory / "state.json")
        tensors = load_file(str(directory / "state.safetensors"))
    except Exception as exc:  # noqa: BLE001 - corrupt JSON or safetensors, missing file
        raise StoreError(f"the saved training state in {directory} is unreadable ({exc}); "
                         "delete it to start over") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for alias, target in info.get("aliases", {}).items():
        model_sd[alias[len("model."):]] = tensors[target]
    try:
        model.load_state_dict(model_sd)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise StoreError(f"the saved training state in {directory} does not fit this model "
                         f"({first}); delete it to start over") from None
    load_optimizer(opt, tensors, info["optimizer"])
    if sched is not None and info.get("scheduler"):
        sd = sched.state_dict()
        sd.update(info["scheduler"])
        sched.load_state_dict(sd)
    return {k: v for k, v in info.items() if k not in ("optimizer", "scheduler", "aliases")}


__all__ = ["STATE_FILE", "clear_state", "load_state", "save_state", "state_path"]
