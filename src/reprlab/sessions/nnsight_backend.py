"""The nnsight session backend (nnsight >= 0.8, < 0.9): trace building and execution.

A compiled session plan is executed by :func:`_interpret`, a generic interpreter whose body
opens ``with model.session():`` and, for each trace of the plan, ``with model.trace(...)``.
nnsight captures those ``with`` blocks from this file's source (it cannot trace code built
with ``exec``), so the interpreter is ordinary code in this module. Inside a trace, sites are
visited in forward order, as nnsight requires; the tensor work is done by
:mod:`reprlab.sessions.runtime`, the same functions the local backend uses.

``remote=True`` sends the whole session to NDIF as one request: nnsight serializes the
session block's source plus the objects it references (the plan: tensors, lists, strings;
the runtime module, shipped by value); job statuses (RECEIVED, QUEUED, DISPATCHED, RUNNING,
COMPLETED or ERROR, plus LOG lines from the server) are shown as they come; only the saved
values are downloaded. The transport lives in :mod:`reprlab.sessions.transport`, the
response reader in :mod:`reprlab.sessions.results`. A model loaded from a folder is named to
NDIF by that folder's path (a local NDIF serves it: ``reprlab ndif``), a hub model by its id.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.sessions import runtime as rt
from reprlab.sessions import transport as tp
from reprlab.sessions.errors import RemoteError
from reprlab.sessions.results import encode_result_frame, load_result  # noqa: F401
from reprlab.sessions.transport import api_settings, warn_custom_host  # noqa: F401

logger = logging.getLogger(__name__)

SUPPORTED = ">=0.8,<0.9"


def _nnsight() -> Any:
    try:
        import nnsight
    except ImportError:
        raise ConfigError("backend 'nnsight' needs nnsight; run `pip install "
                          f"'nnsight{SUPPORTED}'` (or `pip install reprlab[nnsight]`)") from None
    major_minor = tuple(int(p) for p in nnsight.__version__.split(".")[:2])
    if not (0, 8) <= major_minor < (0, 9):
        raise ConfigError(f"reprlab supports nnsight{SUPPORTED}, found {nnsight.__version__}; "
                          f"run `pip install 'nnsight{SUPPORTED}'`")
    return nnsight


def wrap(lm: Any) -> Any:
    """The nnsight envoy for local execution of ``lm`` (cached on the model)."""
    nnsight = _nnsight()
    env = lm.extra.get("nnsight")
    if env is None:
        env = nnsight.NNsight(lm.model)
        lm.extra["nnsight"] = env
    return env


def wrap_remote(lm: Any) -> Any:
    """The ``TransformersModel`` that names ``lm`` on NDIF (same module tree as the server)."""
    nnsight = _nnsight()
    tm = lm.extra.get("nnsight_remote")
    if tm is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tm = nnsight.TransformersModel(lm.model, tokenizer=lm.tokenizer)
        folder = lm.source if isinstance(lm.source, str) and os.path.isdir(lm.source) else None
        if folder is not None:  # a local NDIF serves a folder by its path (no hub id)
            from nnsight.modeling.huggingface import _ID_CACHE

            tm.repo_id = os.path.realpath(folder)
            _ID_CACHE.setdefault(tm.repo_id, tm.repo_id)
        elif "/" in lm.name and not os.path.exists(lm.name):
            tm.repo_id = lm.name
        lm.extra["nnsight_remote"] = tm
    return tm


def remote_model(repo_id: str, revision: str | None = None) -> Any:
    """A :class:`~reprlab.models.LoadedModel` for a model that only NDIF holds.

    Builds the architecture on the meta device (config and tokenizer only, no weights), so
    sites resolve and prompts tokenize locally while every forward runs remotely.
    """
    from reprlab.models import LoadedModel

    nnsight = _nnsight()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tm = nnsight.TransformersModel(repo_id, revision=revision)
    except Exception as exc:  # hub/network failures come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoteError(f"cannot read the config of {repo_id!r} ({first}); check the name "
                          "and your network") from None
    lm = LoadedModel.from_hf(tm._module, tm.tokenizer, name=repo_id, source=repo_id)
    lm.extra["nnsight_remote"] = tm
    lm.extra["remote_only"] = True
    return lm


def model_key(tm: Any) -> str:
    """NDIF's key for a wrapped model (the hub id is canonicalised online by nnsight)."""
    try:
        return tm.to_model_key()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoteError(f"cannot name this model for NDIF ({first}); load it by its hub id "
                          "(e.g. meta-llama/Llama-3.1-70B) or use remote_model()") from None


def _largest_batch(plan: dict) -> int:
    """Tokens (rows x padded length) of the largest forward in a compiled plan."""
    def size(inputs: Any) -> int:
        x = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        return int(x.numel()) if isinstance(x, torch.Tensor) else 0

    best = 0
    for step in plan.get("steps", []):
        best = max(best, size(step.get("inputs")))
        for batch in step.get("batches", []) + ([step["batch"]] if "batch" in step else []):
            best = max(best, size(batch.get("inputs")))
    return best


# -- the interpreter (its `with` blocks are what nnsight captures and ships) -------------

def _interpret(model: Any, models: list, calls: list, plan: dict, emit: Callable[[str], Any],
               backend: Any = None) -> dict:
    results: dict = {}
    save = _nnsight().save
    with model.session(backend=backend):
        env: dict = {}
        ran: list = []
        for step in plan["steps"]:
            kind = step["kind"]
            if kind == "trace":
                m = models[step["model"]]
                targs, tkwargs = calls[step["model"]](step["inputs"])
                rt.run_ops(step["pre"], env)
                with m.trace(*targs, **tkwargs) as tracer:
                    for stage in step["stages"]:
                        node = m.get(stage["path"])
                        if stage["hook"] == "pre":
                            h = node.input
                            new = rt.run_ops(stage["ops"], env, h, step["mask"], stage["site"])
                            if new is not h:
                                node.input = new
                        else:
                            out = node.output
                            h = rt.hidden_of(out)
                            new = rt.run_ops(stage["ops"], env, h, step["mask"], stage["site"])
                            if new is not h:
                                node.output = rt.replace_hidden(out, new)
                    if step["stop"]:
                        tracer.stop()
                    if step["post"]:
                        rt.run_ops(step["post"], env, logits=m.output.logits)
                ran.append(step["index"])
            elif kind == "ops":
                rt.run_ops(step["ops"], env)
            elif kind == "log":
                emit(rt.format_log(step["parts"], env))
            elif kind == "exit":
                if rt.should_exit(step["cond"], env):
                    break
            elif kind == "probe_fit":
                m = models[step["model"]]
                w, b = rt.probe_params(step["dim"], step["n_out"], step["seed"])
                opt = rt.make_optimizer(step["optimizer"], [w, b], step["lr"],
                                        step["weight_decay"])
                losses = []
                for epoch, order in enumerate(step["orders"]):
                    total, count = torch.zeros(()), 0
                    for bi in order:
                        batch = step["batches"][bi]
                        targs, tkwargs = calls[step["model"]](batch["inputs"])
                        with m.trace(*targs, **tkwargs) as tracer:
                            node = m.get(step["path"])
                            h = node.input if step["hook"] == "pre" else rt.hidden_of(node.output)
                            feats = rt.pooled(h, batch["mask"], step["pos"])
                            tracer.stop()
                        loss = rt.probe_step(feats, batch["y"], w, b, opt)
                        total = total + loss * len(batch["y"])
                        count += len(batch["y"])
                    losses.append(total / count)
                    emit(f"epoch {epoch + 1}/{len(step['orders'])}: loss "
                         f"{float(total / count):.6f}")
                env[step["out"]["w"]] = w.detach().clone()
                env[step["out"]["b"]] = b.detach().clone()
                env[step["out"]["losses"]] = torch.stack(losses)
            elif kind == "probe_grad":
                m = models[step["model"]]
                batch = step["batch"]
                targs, tkwargs = calls[step["model"]](batch["inputs"])
                with m.trace(*targs, **tkwargs) as tracer:
                    node = m.get(step["path"])
                    h = node.input if step["hook"] == "pre" else rt.hidden_of(node.output)
                    feats = rt.pooled(h, batch["mask"], step["pos"])
                    tracer.stop()
                loss, dw, db = rt.probe_grad(feats, batch["y"], step["w"], step["b"])
                env[step["out"]["loss"]] = loss
                env[step["out"]["dw"]] = dw
                env[step["out"]["db"]] = db
        rt.collect(results, env, plan["saves"], ran)
        save(results)
    if backend is not None and getattr(backend, "result", None) is not None:
        results = backend.result.get("results", results)
    return results


def decode_request(blob: bytes, lm: Any, compress: bool = True) -> Any:
    """Rebuild the tracer a server would run from a request payload (for checks)."""
    from nnsight.schema.request import RequestModel

    tm = wrap_remote(lm)
    return RequestModel.deserialize(blob, tm._remoteable_persistent_objects(), compress=compress)


def _register_runtime() -> None:
    """Ship the runtime (and the position helper it uses) to the server by value."""
    import reprlab.positions
    import reprlab.sessions.runtime

    nnsight = _nnsight()
    nnsight.register(reprlab.sessions.runtime)
    nnsight.register(reprlab.positions)


def run_plan(models: list, plan: dict, *, remote: bool = False,
             emit: Callable[[str], Any] = logger.info, progress: bool = True,
             **options: Any) -> dict:
    """Execute ``plan`` with nnsight, locally or (``remote=True``) on NDIF."""
    _nnsight()
    if not remote:
        for lm in models:
            if lm.extra.get("remote_only"):
                raise ConfigError(f"{lm.name} has no weights here (remote_model); run the "
                                  "session with remote=True")
        envoys = [wrap(lm) for lm in models]
        from reprlab import _threads

        # one scope for the whole session, sized by its largest forward
        with _threads.for_forward(models[0], _largest_batch(plan), options.get("threads")):
            return _interpret(envoys[0], envoys, [rt.call_kwargs] * len(envoys), plan, emit)
    if len(models) != 1:
        raise ConfigError("a remote session runs on one NDIF model; move activations between "
                          "models with backend='local' or backend='nnsight' without remote")
    host, api_key = api_settings()
    host = options.get("host") or host
    if not api_key:
        raise RemoteError("no NDIF API key: set NDIF_API_KEY (get one at https://login.ndif.us) "
                          "or run with remote=False")
    warn_custom_host(host)
    tm = wrap_remote(models[0])
    backend = tp.make_backend(model_key(tm), host, api_key, emit, progress,
                              tp.request_timeout(options.get("timeout")))
    _register_runtime()
    results = _interpret(tm, [tm], [rt.call_dict], plan, print, backend=backend)
    return dict(results)
