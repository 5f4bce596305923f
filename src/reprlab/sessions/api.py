"""Sessions: several traces run in order, values flow between them, only saves come back.

The user's code inside ``with reprlab.session(...)`` *records* a small plan: reads, writes
and saves are symbolic :class:`Value` objects, and simple tensor operations on them (indexing,
``argmax``, ``softmax``, arithmetic...) are recorded through operator overloading. When the
``with`` block ends, a backend executes the plan:

* ``local``: forward hooks from :mod:`reprlab.hooks` on the loaded model;
* ``nnsight``: the same plan run inside ``model.session()`` / ``model.trace()`` blocks by an
  interpreter in :mod:`reprlab.sessions.nnsight_backend` (locally, or on NDIF with
  ``remote=True``: one request for the whole session, only saved values downloaded).

Both backends execute the operations with the same functions
(:mod:`reprlab.sessions.runtime`), so they give identical numbers. Inside one trace,
operations are scheduled in forward order (the order of the sites in the model), which is
also what nnsight requires.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reprlab.errors import ConfigError, SiteError
from reprlab.sessions import runtime as rt
from reprlab.sessions.errors import (  # noqa: F401 - RemoteError re-exported
    NotRunError,
    RemoteError,
    SessionError,
    ShapeError,
)
from reprlab.sessions.session_models import (  # noqa: F401 - re-exported
    as_session_model,
    encode,
    session_model,
)
from reprlab.sessions.values import Value, _ref_args, _values_in

logger = logging.getLogger(__name__)

PRE = (-(10**9), 0, 0)
POST = (10**9, 0, 0)

#: backend name -> "module:function" running a compiled plan
BACKENDS = {
    "local": "reprlab.sessions.local:run_plan",
    "nnsight": "reprlab.sessions.nnsight_backend:run_plan",
}


class Trace:
    """One forward pass of a session (see :meth:`Session.trace`)."""

    def __init__(self, session: Session, index: int, model: int, inputs: dict):
        self.session, self.index, self.model_index = session, index, model
        self.lm = session.models[model]
        self.inputs = inputs
        self._ops: list[tuple[tuple, int, tuple]] = []
        self._sites: dict[tuple, Any] = {}
        self._stop = False
        self._logits = False
        self._closed = False
        self._seq = itertools.count()

    # -- recording ----------------------------------------------------------------------
    def _site(self, spec: str) -> tuple[tuple, Any]:
        from reprlab.sites import resolve_sites

        if not isinstance(spec, str):
            raise SiteError(f"a site is a string such as 'layers.3', got {spec!r}")
        sites = resolve_sites(self.lm, spec)
        if len(sites) != 1:
            raise SiteError(f"{spec!r} names {len(sites)} sites; read or write one site at a time "
                            "(e.g. 'layers.3')")
        site = sites[0]
        key = site_key(self.lm, site)
        self._sites[key] = site
        return key, site

    def _record(self, key: tuple, op: tuple) -> None:
        if self._closed:
            raise SessionError(f"trace {self.index} is closed; record inside its `with` block")
        self._ops.append((key, next(self._seq), op))

    def read(self, site: str, pos: int | str | None = None) -> Value:
        """The hidden state at ``site``: [B, T, d] (pos None), [B, d] at a position
        (int k = k-th real token, negative from the end; "last", "first", "middle", "mean")."""
        pos = _check_pos(pos)
        key, s = self._site(site)
        v = self.session._new(self.index, key, f"{s.name}@{pos}")
        self._record(key, ("read", v._id, pos))
        return v

    def write(self, site: str, value: Any, pos: Any = None, rows: Sequence[int] | None = None
              ) -> None:
        """Replace the hidden state at ``site`` (at ``pos``; only ``rows`` when given) by
        ``value`` (a session value or a tensor that broadcasts to [rows, d] / [rows, T, d])."""
        self._write(site, value, pos, rows, "set")

    def add(self, site: str, value: Any, pos: Any = None, rows: Sequence[int] | None = None
            ) -> None:
        """Add ``value`` to the hidden state at ``site`` (steering)."""
        self._write(site, value, pos, rows, "add")

    def _write(self, site: str, value: Any, pos: Any, rows: Any, mode: str) -> None:
        pos = _check_pos(pos, allow_list=True)
        if pos == "mean":
            raise ConfigError("cannot write at pos 'mean'; give a token position or None")
        key, s = self._site(site)
        src = self.session._as_value(value)
        if src._trace == self.index and src._key > key:
            raise SessionError(
                f"cannot write at {s.name} a value computed later in the same forward pass "
                f"({src._label}); read it in an earlier trace")
        self._record(key, ("write", rt.ref(src._id), pos, None if rows is None else list(rows),
                           mode))

    @property
    def logits(self) -> Value:
        """The model's output logits [B, T, vocab] (causal language models)."""
        if not self.lm.is_causal:
            raise SiteError(f"{self.lm.name} has no logits (not a causal language model); "
                            "read a site such as 'layers.-1' instead")
        if self._stop:
            raise SessionError("this trace stops early (t.stop()); logits are not computed")
        self._logits = True
        v = self.session._new(self.index, POST, "logits")
        self._record(POST, ("logits", v._id))
        return v

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def save(self, value: Any, name: str | None = None) -> Value:
        """Mark ``value`` to come back when the session ends (see :meth:`Session.save`)."""
        return self.session.save(value, name)

    def stop(self) -> None:
        """End the forward right after the deepest site this trace touches."""
        if self._logits:
            raise SessionError("this trace reads logits; it cannot stop early")
        self._stop = True

    # -- context ------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.session._current = None
        self._closed = True
        return False

    def compile(self) -> dict:
        """This trace as plain data: pre ops, per-site stages in forward order, post ops."""
        ordered = sorted(self._ops, key=lambda item: (item[0], item[1]))
        stages: list[dict] = []
        pre, post = [], []
        for key, _, op in ordered:
            if key == PRE:
                pre.append(op)
            elif key == POST:
                post.append(op)
            else:
                if not stages or stages[-1]["key"] != key:
                    site = self._sites[key]
                    stages.append({"key": key, "site": site.name, "path": site.module_path,
                                   "hook": site.hook, "ops": []})
                stages[-1]["ops"].append(op)
        for st in stages:
            st.pop("key")
        if self._stop and not stages:
            raise SessionError(f"trace {self.index} stops early but touches no site")
        return {"kind": "trace", "index": self.index, "model": self.model_index,
                "inputs": self.inputs, "mask": self.inputs["attention_mask"], "pre": pre,
                "stages": stages, "post": post, "logits": self._logits, "stop": self._stop}


def _check_pos(pos: Any, allow_list: bool = False) -> Any:
    if pos is None or pos in ("last", "first", "middle", "mean"):
        return pos
    if isinstance(pos, bool):
        raise ConfigError(f"bad position {pos!r}")
    if isinstance(pos, int):
        return pos
    if isinstance(pos, str):
        try:
            return int(pos)
        except ValueError:
            pass
    if allow_list and isinstance(pos, (list, tuple, torch.Tensor)):
        return [int(p) for p in (pos.tolist() if isinstance(pos, torch.Tensor) else pos)]
    raise ConfigError(f"bad position {pos!r}; use an int (k-th token, negative from the end), "
                      "last, first, middle, mean or None (all tokens)")


def site_key(lm: Any, site: Any) -> tuple:
    """Forward-order key of a site: (layer, rank within the layer, module order)."""
    order = {name: i for i, (name, _) in enumerate(lm.model.named_modules())}
    idx = order.get(site.module_path, 0)
    if site.kind == "embed":
        return (-1, 0, idx)
    rank = {"attn": 1, "mlp": 2, "block": 3, "final_norm": 0}
    if site.kind in rank:
        return (site.layer, rank[site.kind], idx)
    # raw module path: inside block i, or before / after the blocks
    prefix = lm.arch.layers_path + "."
    if site.module_path.startswith(prefix):
        i = int(site.module_path[len(prefix):].split(".")[0])
        return (i, 2, idx)
    before = idx < order.get(lm.arch.layers_path, 0)
    return (-2, 0, idx) if before else (lm.arch.n_layers, 1, idx)


class Session:
    """A group of traces that run in order on one backend (see :func:`session`)."""

    def __init__(self, models: list, backend: str = "local", remote: bool = False,
                 on_log: Callable[[str], Any] | None = None, progress: bool = True,
                 tokenizer: Any = None, threads: int | None = None, **options: Any):
        from reprlab.models import LoadedModel

        models = [as_session_model(m, tokenizer) for m in models]
        if backend not in BACKENDS:
            raise ConfigError(f"unknown session backend {backend!r}; use one of "
                              f"{', '.join(BACKENDS)}")
        if remote and backend != "nnsight":
            raise ConfigError("remote=True needs backend='nnsight' (NDIF runs nnsight)")
        if not models:
            raise ConfigError("a session needs at least one model")
        for m in models:
            if not isinstance(m, LoadedModel):
                raise ConfigError(f"a session runs on a reprlab LoadedModel (reprlab.load_model), "
                                  f"a Hugging Face model or an nnsight LanguageModel; got "
                                  f"{type(m).__name__}")
        sizes = {m.arch.hidden_size for m in models}
        if len(sizes) > 1:
            desc = ", ".join(f"{m.name}: {m.arch.hidden_size}" for m in models)
            raise SessionError(f"models in one session must share a hidden size ({desc}); "
                               "activations cannot move between them")
        self.models = list(models)
        self.backend, self.remote, self.progress, self.options = backend, remote, progress, options
        if threads is not None and int(threads) < 0:
            raise ConfigError(f"threads must be at least 1 (or None for the policy), got {threads}")
        self.threads = int(threads) if threads else None
        self.on_log = on_log
        self.logs: list[str] = []
        self._steps: list[Any] = []
        self._saves: dict[str, int] = {}
        self._ids = itertools.count()
        self._current: Trace | None = None
        self._n_traces = 0
        self._results: dict | None = None
        self._ran: set[int] = set()
        self._state = "recording"

    # -- recording ----------------------------------------------------------------------
    def _new(self, trace: int | None, key: tuple, label: str) -> Value:
        return Value(self, next(self._ids), trace, key, label)

    def _check_owner(self, v: Value) -> None:
        if v._s is not self:
            raise SessionError(f"{v!r} belongs to another session; values move between traces "
                               "of one session only (save it and pass .value as a tensor)")

    def _as_value(self, x: Any) -> Value:
        if isinstance(x, Value):
            self._check_owner(x)
            return x
        if isinstance(x, (int, float)):
            x = torch.tensor(x)
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"expected a session value or a tensor, got {type(x).__name__}")
        return self._call("m:detach", (x,), {})

    def _call(self, fname: str, args: tuple, kwargs: dict) -> Value:
        vals = _values_in(args) + _values_in(kwargs)
        for v in vals:
            self._check_owner(v)
        t = self._current
        key = PRE
        if t is not None:
            same = [v._key for v in vals if v._trace == t.index]
            key = max(same) if same else PRE
        label = f"{fname.removeprefix('m:')}(...)"
        v = self._new(t.index if t is not None and key != PRE else None, key, label)
        if t is not None and key != PRE:
            v._trace = t.index
        op = ("call", v._id, fname, _ref_args(self, tuple(args)), _ref_args(self, kwargs))
        if t is not None:
            t._record(key, op)
        else:
            self._session_op(op)
        return v

    def _session_op(self, op: tuple) -> None:
        if self._steps and isinstance(self._steps[-1], dict) and self._steps[-1]["kind"] == "ops":
            self._steps[-1]["ops"].append(op)
        else:
            self._steps.append({"kind": "ops", "ops": [op]})

    def _check_recording(self) -> None:
        if self._state != "recording":
            raise SessionError("this session has already run; start a new one")

    def trace(self, prompts: str | Sequence[str] | dict, model: int | Any = 0) -> Trace:
        """Open a trace (one forward pass) of ``prompts`` on ``model`` (index or model)."""
        self._check_recording()
        if self._current is not None:
            raise SessionError("traces do not nest; close the current trace first")
        idx = model if isinstance(model, int) else next(
            (i for i, m in enumerate(self.models) if m is model), None)
        if idx is None or not 0 <= idx < len(self.models):
            raise ConfigError(f"model {model!r} is not one of this session's "
                              f"{len(self.models)} models")
        lm = self.models[idx]
        inputs = encode(lm, prompts)
        t = Trace(self, self._n_traces, idx, inputs)
        self._n_traces += 1
        self._steps.append(t)
        self._current = t
        return t

    def save(self, value: Any, name: str | None = None) -> Value:
        """Mark ``value`` to come back in :attr:`results` under ``name``."""
        self._check_recording()
        v = self._as_value(value)
        name = name or f"save_{len(self._saves)}"
        if name in self._saves or name.startswith("__"):
            raise ConfigError(f"a saved value is already named {name!r}; pick another name")
        self._saves[name] = v._id
        v._label = name
        return v

    def log(self, *parts: Any) -> None:
        """A message shown while the session runs (values are formatted when known)."""
        self._check_recording()
        self._steps.append({"kind": "log", "parts": [_ref_args(self, p) for p in parts]})

    def exit(self, when: Any = None) -> None:
        """End the session here (when ``when`` is given: only if it is true at run time)."""
        self._check_recording()
        cond = None if when is None else _ref_args(self, self._as_value(when))
        self._steps.append({"kind": "exit", "cond": cond})

    def add_step(self, step: dict) -> None:
        """Append a backend-level step (used by probe training)."""
        self._check_recording()
        self._steps.append(step)

    # -- running ------------------------------------------------------------------------
    def compile(self) -> dict:
        steps = [s.compile() if isinstance(s, Trace) else s for s in self._steps]
        return {"steps": steps, "saves": dict(self._saves)}

    def _emit(self, message: str) -> None:
        self.logs.append(message)
        logger.info("%s", message)
        if self.on_log is not None:
            self.on_log(message)

    def run(self) -> dict:
        self._check_recording()
        if self._current is not None and not self._current._closed:
            raise SessionError("close every trace before running the session")
        plan = self.compile()
        self._state = "running"
        module_name, fn_name = BACKENDS[self.backend].split(":")
        runner = getattr(importlib.import_module(module_name), fn_name)
        try:
            out = runner(self.models, plan, remote=self.remote, emit=self._emit,
                         progress=self.progress, threads=self.threads, **self.options)
        except rt.WriteShapeError as exc:
            self._state = "failed"
            raise ShapeError(str(exc)) from None
        except BaseException:
            self._state = "failed"
            raise
        self._ran = set(out.pop("__ran__", []))
        self._results = out
        self._state = "done"
        return out

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.run()
        return False

    @property
    def results(self) -> dict:
        """Saved values by name (after the session ran)."""
        if self._results is None:
            raise NotRunError("the session has not run yet: results exist after the "
                              "`with session(...)` block ends")
        return dict(self._results)

    def _value_of(self, v: Value) -> Any:
        if self._results is None:
            where = f"trace {v._trace}" if v._trace is not None else "the session"
            raise NotRunError(f"{v._label} comes from {where}, which has not run yet; read "
                              ".value after the `with session(...)` block ends")
        if v._trace is not None and v._trace not in self._ran:
            raise NotRunError(f"{v._label} comes from trace {v._trace}, which did not run "
                              "(the session exited before it)")
        for name, vid in self._saves.items():
            if vid == v._id and name in self._results:
                return self._results[name]
        raise NotRunError(f"{v._label} was not saved, so it did not come back; wrap it in "
                          "t.save(...) inside the session")


def session(*models: Any, backend: str = "local", remote: bool = False,
            on_log: Callable[[str], Any] | None = None, progress: bool = True,
            tokenizer: Any = None, threads: int | None = None, **options: Any) -> Session:
    """Start a session on one or more models (same hidden size).

    A model is a :class:`~reprlab.models.LoadedModel`, a Hugging Face model already in memory
    (with ``tokenizer``, or its own) or an nnsight ``LanguageModel``. ``backend``: "local"
    (reprlab hooks) or "nnsight" (nnsight traces; ``remote=True`` sends the whole session to
    NDIF as one request). ``on_log`` receives each ``s.log(...)`` message (and remote job
    statuses) as the session runs; messages are also logged at INFO. ``threads``: torch threads
    for the forwards run here (None: :func:`reprlab._threads.for_forward`'s choice per forward,
    or ``REPRLAB_THREADS`` / ``set_threads``); the caller's count is restored afterwards.
    """
    flat: list = []
    for m in models:
        flat.extend(m if isinstance(m, (list, tuple)) else [m])
    return Session(flat, backend=backend, remote=remote, on_log=on_log, progress=progress,
                   tokenizer=tokenizer, threads=threads, **options)
