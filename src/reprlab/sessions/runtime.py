"""What a session plan does to tensors: shared by every backend, pure torch.

A compiled session plan (see :mod:`reprlab.sessions.api`) is plain data: lists, dicts,
strings, numbers and tensors. The functions here execute its operations on real tensors.
The local backend calls them from forward hooks; the nnsight backend calls them from inside
nnsight traces, and for remote runs this module is shipped to the server by value, so it
imports nothing but torch (and :func:`reprlab.positions.nth_index`, also shipped by value).
Because both backends run the very same functions, they give identical numbers.

Operations (tuples):

    ("read", vid, pos)                        env[vid] = hidden at pos (detached)
    ("write", src, pos, rows, mode)           hidden[rows, pos] = / += value of ref src
    ("call", vid, fname, args, kwargs)        env[vid] = FUNCTIONS[fname](*args, **kwargs)
    ("logits", vid)                           env[vid] = logits of the forward (post stage)
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from reprlab.positions import nth_index

REF = "\x00ref"


class WriteShapeError(ValueError):
    """A value cannot be written where it was asked to go (shape mismatch)."""


class PlanRuntimeError(ValueError):
    """An operation of a plan failed on real tensors."""


def ref(vid: int) -> tuple:
    return (REF, vid)


def is_ref(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and x[0] == REF


def resolve(x: Any, env: dict) -> Any:
    """Replace value references in ``x`` (nested lists/tuples/dicts) by their tensors."""
    if is_ref(x):
        return env[x[1]]
    if isinstance(x, list):
        return [resolve(v, env) for v in x]
    if isinstance(x, tuple):
        return tuple(resolve(v, env) for v in x)
    if isinstance(x, dict):
        return {k: resolve(v, env) for k, v in x.items()}
    return x


def _method(name: str):
    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(x, name)(*args, **kwargs)
    return call


#: name -> function; every operation a plan may apply to values
FUNCTIONS: dict[str, Any] = {
    "getitem": operator.getitem, "add": operator.add, "sub": operator.sub,
    "mul": operator.mul, "truediv": operator.truediv, "matmul": operator.matmul,
    "pow": operator.pow, "neg": operator.neg, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge, "eq": operator.eq, "ne": operator.ne,
    "abs": operator.abs,
    "stack": lambda *xs, dim=0: torch.stack(list(xs), dim=dim),
    "cat": lambda *xs, dim=0: torch.cat(list(xs), dim=dim),
}
METHODS = (
    "argmax", "argmin", "softmax", "log_softmax", "sum", "mean", "max", "min", "topk", "float",
    "double", "long", "int", "bool", "detach", "clone", "norm", "exp", "log", "sqrt", "sigmoid",
    "tanh", "relu", "squeeze", "unsqueeze", "reshape", "view", "flatten", "t", "transpose",
    "permute", "gather", "index_select", "to", "cpu", "std", "var", "logsumexp", "cumsum",
    "round", "any", "all", "expand", "repeat", "diff", "clamp",
)
for _name in METHODS:
    FUNCTIONS["m:" + _name] = _method(_name)


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (tensor, tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise PlanRuntimeError(f"cannot find a hidden-state tensor in a {type(output).__name__}")


def replace_hidden(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    key = next(iter(output.keys()))
    output[key] = new
    return output


def token_index(mask: torch.Tensor, pos: Any, rows: torch.Tensor) -> torch.Tensor:
    """Token index (along T) for each row in ``rows``: [len(rows)] long.

    ``pos``: int k (k-th non-padding token, negative from the end), ``"last"``, ``"first"``,
    ``"middle"``, or a per-row list of ints.
    """
    m = mask[rows]
    if isinstance(pos, str):
        if pos == "last":
            return nth_index(m, -1)
        if pos == "first":
            return nth_index(m, 0)
        if pos == "middle":
            return nth_index(m, (m.to(torch.long).sum(1) - 1) // 2)
        raise PlanRuntimeError(f"unknown position {pos!r}")
    if isinstance(pos, (list, tuple)):
        k = torch.as_tensor(list(pos), dtype=torch.long, device=mask.device)
        return nth_index(m, k)
    return nth_index(m, int(pos))


def _rows(n: int, rows: Any, device: torch.device) -> torch.Tensor:
    if rows is None:
        return torch.arange(n, device=device)
    return torch.as_tensor(list(rows), dtype=torch.long, device=device)


def select(hidden: torch.Tensor, mask: torch.Tensor, pos: Any) -> torch.Tensor:
    """Read ``hidden [B, T, d]`` at ``pos``: None -> [B, T, d]; a position -> [B, d];
    ``"mean"`` -> masked mean [B, d]."""
    h = hidden.detach()
    if pos is None:
        return h.clone()
    if pos == "mean":
        w = mask.to(h.dtype).unsqueeze(-1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)
    rows = _rows(h.shape[0], None, h.device)
    return h[rows, token_index(mask.to(h.device), pos, rows)]


def put(hidden: torch.Tensor, mask: torch.Tensor, pos: Any, rows: Any, value: Any,
        mode: str, site: str) -> torch.Tensor:
    """A copy of ``hidden`` with ``value`` written (``mode`` "set") or added ("add") at
    ``rows`` × ``pos``. Raises :class:`WriteShapeError` when the shapes do not fit."""
    new = hidden.clone()
    r = _rows(hidden.shape[0], rows, hidden.device)
    value = torch.as_tensor(value).to(device=hidden.device, dtype=hidden.dtype)
    if pos is None:
        target_shape = (len(r), *hidden.shape[1:])
        idx = None
    else:
        idx = token_index(mask.to(hidden.device), pos, r)
        target_shape = (len(r), hidden.shape[-1])
    try:
        ok = torch.broadcast_shapes(tuple(value.shape), target_shape) == torch.Size(target_shape)
    except RuntimeError:
        ok = False
    if not ok:
        where = f"{site}" + ("" if pos is None else f" pos {pos}")
        raise WriteShapeError(
            f"cannot write a value of shape {list(value.shape)} at {where}: the target has "
            f"shape {list(target_shape)} (rows x hidden); read it at one position, or check that "
            "both models have the same hidden size")
    if idx is None:
        new[r] = value + new[r] if mode == "add" else value.expand(target_shape)
    elif mode == "add":
        new[r, idx] = new[r, idx] + value
    else:
        new[r, idx] = value.expand(target_shape)
    return new


def run_ops(ops: list, env: dict, hidden: torch.Tensor | None = None,
            mask: torch.Tensor | None = None, site: str = "", logits: Any = None
            ) -> torch.Tensor | None:
    """Run ``ops`` in order; returns the (possibly rewritten) hidden state."""
    for op in ops:
        kind = op[0]
        if kind == "read":
            env[op[1]] = select(hidden, mask, op[2])
        elif kind == "write":
            hidden = put(hidden, mask, op[2], op[3], resolve(op[1], env), op[4], site)
        elif kind == "call":
            fn = FUNCTIONS[op[2]]
            env[op[1]] = fn(*resolve(op[3], env), **resolve(op[4], env))
        elif kind == "logits":
            env[op[1]] = logits.detach()
        else:
            raise PlanRuntimeError(f"unknown operation {kind!r}")
    return hidden


def call_kwargs(inputs: dict) -> tuple[tuple, dict]:
    """Trace arguments for a wrapped bare module: ``model(**inputs)``."""
    return (), dict(inputs)


def call_dict(inputs: dict) -> tuple[tuple, dict]:
    """Trace arguments for a model wrapper that takes one encoding."""
    return (dict(inputs),), {}


def format_log(parts: list, env: dict) -> str:
    out = []
    for p in parts:
        if is_ref(p):
            v = env.get(p[1])
            if isinstance(v, torch.Tensor):
                v = f"{v.item():.6g}" if v.numel() == 1 else str(v.detach().cpu().tolist())
            out.append(str(v))
        else:
            out.append(str(p))
    return " ".join(out)


def should_exit(cond: Any, env: dict) -> bool:
    if cond is None:
        return True
    v = resolve(cond, env)
    return bool(torch.as_tensor(v).any())


def collect(results: dict, env: dict, saves: dict, ran: list) -> dict:
    """Fill ``results`` with the saved values that exist (detached, on CPU)."""
    for name, vid in saves.items():
        if vid in env:
            v = env[vid]
            results[name] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
    results["__ran__"] = list(ran)
    return results


# -- probe training (the whole loop runs wherever the session runs) -----------------------

def probe_params(d: int, n_out: int, seed: int, dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-initialised logistic probe: weight [n_out, d], bias [n_out] (leaf tensors)."""
    del seed  # zero init: identical on every backend; seed only orders the batches
    w = torch.zeros(n_out, d, dtype=dtype, requires_grad=True)
    b = torch.zeros(n_out, dtype=dtype, requires_grad=True)
    return w, b


def probe_loss(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
               ) -> torch.Tensor:
    """Logistic loss. h [B, d], y [B] long; w [1, d] (binary, BCE) or [C, d] (softmax CE)."""
    logits = h.to(w.dtype) @ w.T + b
    if w.shape[0] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], y.to(w.dtype))
    return torch.nn.functional.cross_entropy(logits, y)


OPTIMIZERS = {
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, weight_decay=wd),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
}


def make_optimizer(name: str, params: list, lr: float, wd: float) -> Any:
    return OPTIMIZERS[name](params, lr, wd)


def probe_step(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               opt: Any) -> torch.Tensor:
    """One optimizer step on a batch; returns the batch loss (detached)."""
    opt.zero_grad()
    loss = probe_loss(h.detach(), y, w, b)
    loss.backward()
    opt.step()
    return loss.detach()


def probe_grad(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of the probe loss at (w, b): (loss, dw, db)."""
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    loss = probe_loss(h.detach(), y, w, b)
    dw, db = torch.autograd.grad(loss, [w, b])
    return loss.detach(), dw, db


def pooled(hidden: torch.Tensor, mask: torch.Tensor, pos: Any) -> torch.Tensor:
    """Probe features: ``hidden`` at ``pos`` (a position or "mean"), detached [B, d]."""
    return select(hidden, mask, pos)
