"""Resumable training state as safetensors + JSON (no pickle).

A tracked run keeps, under ``<out>/track/``: ``state.safetensors`` + ``state.json`` (model
weights, optimiser and scheduler state, position in training; overwritten atomically at each
checkpoint), ``history.json`` (metrics per checkpoint) and one cloud file per checkpoint
(``clouds/step-0000100.safetensors`` or a full activation store under ``stores/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprlab.errors import StoreError
from reprlab.io import atomic_write_bytes, read_json, write_json


def optimizer_payload(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("opt."):
            continue
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(directory: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
               info: dict) -> None:
    """Write ``state.safetensors`` then ``state.json`` (the JSON marks the state complete)."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    opt_t, opt_meta = optimizer_payload(opt)
    seen: dict[int, str] = {}
    model_t, aliases = {}, {}
    for k, v in model.state_dict().items():  # tied weights are stored once
        ptr = v.data_ptr()
        if ptr in seen and v.shape == model_t[seen[ptr]].shape:
            aliases[k] = seen[ptr]
            continue
        seen[ptr] = "model." + k
        model_t["model." + k] = v.detach().cpu().contiguous().clone()
    aliases = {"model." + k: v for k, v in aliases.items()}
    atomic_write_bytes(directory / "state.safetensors", save({**model_t, **opt_t}))
    sched_sd = sched.state_dict() if sched is not None else None
    if sched_sd is not None:
        sched_sd = {k: v for k, v in sched_sd.items() if k != "lr_lambdas"}
    write_json(directory / "state.json", {**info, "optimizer": opt_meta, "scheduler": sched_sd,
                                          "aliases": aliases})


def load_state(directory: Path, model: nn.Module, opt: torch.optim.Optimizer,
               sched: Any) -> dict | None:
    """Restore a saved state; ``None`` when there is none. Returns the saved ``info``."""
    from safetensors.torch import load_file

    if not (directory / "state.json").exists():
        return None
    try:
        info = read_json(directory / "state.json")
        tensors = load_file(str(directory / "state.safetensors"))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise StoreError(f"the saved training state in {directory} is unreadable ({exc}); "
                         "delete it to start over") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for alias, target in info.get("aliases", {}).items():
        model_sd[alias[len("model."):]] = tensors[target]
    model.load_state_dict(model_sd)
    load_optimizer(opt, tensors, info["optimizer"])
    if sched is not None and info.get("scheduler"):
        sd = sched.state_dict()
        sd.update(info["scheduler"])
        sched.load_state_dict(sd)
    return info
