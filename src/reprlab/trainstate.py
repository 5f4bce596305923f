"""Resumable training state in ONE safetensors file (no pickle), committed atomically.

Weights, optimiser tensors and RNG states are tensors; everything else (position in training,
scheduler, optimiser hyper-parameters, the caller's ``info``) is JSON kept in the safetensors
header. One file renamed into place is one commit: a crash at any moment leaves either the old
state or the new one, never new weights beside an old step counter.

Every resumable job (drift train, the toy build, preference and lens training) saves through
:func:`save_train_state` and restores through :func:`load_train_state`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reprlab.errors import StoreError
from reprlab.io import _jsonable, atomic_write_bytes

_META_KEY = "reprlab_state"


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


def rng_payload() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA), NumPy and Python RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["rng.numpy"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def check_loss(loss: float, step: int, what: str, hint: str = "lower --lr") -> None:
    """Stop a run whose loss at ``step`` is NaN or infinite (:class:`TrainingError`, one
    line), before that step is saved: the last checkpoint stays, no completion mark is
    written."""
    import math

    from reprlab.errors import TrainingError

    if not math.isfinite(float(loss)):
        raise TrainingError(f"{what} diverged: the loss at step {step} is {float(loss)}; "
                            f"nothing of it was saved and the run is not complete; {hint} "
                            "and train into another --out")


def save_train_state(path: str | Path, model: nn.Module | None, opt: torch.optim.Optimizer | None,
                     sched: Any, info: dict, *, tensors: dict[str, torch.Tensor] | None = None,
                     trainable_only: bool = False, rng: bool = True) -> None:
    """Write the whole state to ``path`` (one ``.safetensors`` file) atomically.

    ``trainable_only`` keeps only parameters with ``requires_grad`` (adapters); ``tensors``
    adds named extras (kept under ``extra.<name>``).
    """
    from safetensors.torch import save

    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    if model is not None:
        keep = ({n for n, p in model.named_parameters() if p.requires_grad}
                if trainable_only else None)
        seen: dict[tuple[int, tuple], str] = {}
        for k, v in model.state_dict(keep_vars=False).items():
            if keep is not None and k not in keep:
                continue
            key = (v.data_ptr(), tuple(v.shape))
            if key in seen:  # tied weights are stored once
                aliases["model." + k] = seen[key]
                continue
            seen[key] = "model." + k
            out["model." + k] = v.detach().cpu().contiguous().clone()
    meta: dict[str, Any] = {"info": info, "aliases": aliases, "trainable_only": trainable_only}
    if opt is not None:
        opt_t, meta["optimizer"] = optimizer_payload(opt)
        out.update(opt_t)
    if sched is not None:
        sd = sched.state_dict()
        meta["scheduler"] = {k: v for k, v in sd.items() if k != "lr_lambdas"}
    if rng:
        rng_t, meta["rng"] = rng_payload()
        out.update(rng_t)
    for k, v in (tensors or {}).items():
        out["extra." + k] = v.detach().cpu().contiguous()
    header = {_META_KEY: json.dumps(_jsonable(meta), allow_nan=False)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(out, metadata=header))


def read_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, meta)`` of a saved state, ``None`` when there is none."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[_META_KEY])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, Exception) as exc:
        raise StoreError(f"the saved training state {path} is unreadable ({exc}); "
                         "delete it to start over") from None
    return tensors, meta


def load_train_state(path: str | Path, model: nn.Module | None, opt: torch.optim.Optimizer | None,
                     sched: Any, *, rng: bool = True) -> dict | None:
    """Restore what :func:`save_train_state` wrote; returns its ``info`` (``None``: no state).

    Returns the saved ``info`` dict, with the extra tensors under ``info["_tensors"]``.
    """
    got = read_train_state(path)
    if got is None:
        return None
    tensors, meta = got
    if model is not None:
        sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        for alias, target in meta.get("aliases", {}).items():
            sd[alias[len("model."):]] = tensors[target]
        missing, unexpected = model.load_state_dict(sd, strict=not meta.get("trainable_only"))
        if unexpected:
            raise StoreError(f"the saved training state {path} does not fit this model "
                             f"(unexpected {unexpected[:3]}); delete it to start over")
    if opt is not None and "optimizer" in meta:
        load_optimizer(opt, tensors, meta["optimizer"])
    if sched is not None and meta.get("scheduler"):
        sd = sched.state_dict()
        sd.update(meta["scheduler"])
        sched.load_state_dict(sd)
    if rng and "rng" in meta:
        restore_rng(tensors, meta["rng"])
    info = dict(meta["info"])
    info["_tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return info
