"""The nnsight session backend (nnsight >= 0.8, < 0.9). Every nnsight call lives here.

A compiled session plan is executed by :func:`_interpret`, a generic interpreter whose body
opens ``with model.session():`` and, for each trace of the plan, ``with model.trace(...)``.
nnsight captures those ``with`` blocks from this file's source (it cannot trace code built
with ``exec``), so the interpreter is ordinary code in this module. Inside a trace, sites are
visited in forward order, as nnsight requires; the tensor work is done by
:mod:`reprlab.sessions.runtime`, the same functions the local backend uses.

``remote=True`` sends the whole session to NDIF as one request: nnsight serializes the
session block's source plus the objects it references (the plan: tensors, lists, strings;
the runtime module, shipped by value), zstd-compressed, ``POST {host}/request``; job
statuses (RECEIVED, QUEUED, DISPATCHED, RUNNING, COMPLETED or ERROR, plus LOG lines from the
server) arrive over a websocket and are shown as they come; only the saved values are
downloaded. Host: ``NDIF_HOST`` / nnsight's ``CONFIG.API.HOST``; key: ``NDIF_API_KEY`` /
``CONFIG.API.APIKEY``.

Trust: the API key goes to whatever host ``NDIF_HOST`` names, so a host other than the default
is announced once with a warning. Results are unpickled by an unpickler that accepts only
tensors, numbers, strings, lists, dicts and nnsight's status (nnsight's own loader would
unpickle any object, which lets a hostile host run code here). The request carries the session's source
and reprlab's runtime functions with file names relative to the package
(``reprlab/sessions/runtime.py``), not this machine's paths.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.sessions import runtime as rt
from reprlab.sessions.errors import RemoteError

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


# -- remote transport ----------------------------------------------------------------------

def api_settings() -> tuple[str, str | None]:
    """(host, api key) from the environment or nnsight's config."""
    from nnsight import CONFIG

    host = os.environ.get("NDIF_HOST") or CONFIG.API.HOST
    key = os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY
    return host, key


_WARNED_HOSTS: set[str] = set()


def warn_custom_host(host: str) -> bool:
    """Warn once per host that is not nnsight's default; returns whether it warned."""
    from nnsight import CONFIG

    default = type(CONFIG.API)().HOST if hasattr(type(CONFIG.API), "model_fields") else None
    if host in (default, "https://api.ndif.us", "api.ndif.us") or host in _WARNED_HOSTS:
        return False
    _WARNED_HOSTS.add(host)
    logger.warning("NDIF_HOST is %s, not the default NDIF server: your NDIF_API_KEY is sent "
                   "there and it returns the results; use only a host you trust", host)
    return True


_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray"}


def _safe_global(module: str, name: str) -> bool:
    """Only what rebuilds tensors and plain containers (and nnsight's status enum)."""
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch._tensor":
        return name == "_rebuild_from_type_v2"
    if module == "torch":
        obj = getattr(torch, name, None)
        return isinstance(obj, torch.dtype) or name.endswith("Storage") or name in (
            "Size", "Tensor", "device")
    if module == "torch.storage":
        return name in ("TypedStorage", "UntypedStorage")
    if module == "collections":
        return name == "OrderedDict"
    if module == "builtins":
        return name in _SAFE_BUILTINS
    return (module, name) == ("nnsight.schema.response", "Status")


def _restricted_pickle() -> Any:
    """A pickle module for ``torch.load`` whose unpickler refuses every other global."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if not _safe_global(module, name):
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
            return super().find_class(module, name)

    mod = types.ModuleType("reprlab_restricted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return mod


def load_result(content: bytes) -> Any:
    """A result blob as tensors, numbers, strings, lists and dicts; anything else is refused
    (nnsight itself would unpickle any object: a hostile host could run code here)."""
    import pickle

    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle())
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise RemoteError("the NDIF result holds objects other than tensors and plain values "
                          f"({first}); refusing to load it (check NDIF_HOST)") from None


def _public_filename(path: str) -> str:
    """``/home/u/src/reprlab/sessions/runtime.py`` -> ``reprlab/sessions/runtime.py``."""
    import reprlab

    root = os.path.dirname(os.path.dirname(os.path.abspath(reprlab.__file__)))
    full = os.path.abspath(path) if path else path
    if full and full.startswith(root + os.sep):
        return os.path.relpath(full, root)
    return path


def _public_code(code: Any) -> Any:
    consts = tuple(_public_code(c) if hasattr(c, "co_filename") else c for c in code.co_consts)
    return code.replace(co_filename=_public_filename(code.co_filename), co_consts=consts)


class _PublicPaths:
    """While serialising a request: reprlab's file names relative to the package."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules
        self.undo: list[Callable[[], None]] = []

    def _set(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        setattr(obj, name, value)
        self.undo.append(lambda: setattr(obj, name, old))

    def __enter__(self) -> _PublicPaths:
        import inspect

        from nnsight.tracing import tracer as nn_tracer

        for mod in self.modules:
            for attr in ("__file__", "__cached__"):
                if getattr(mod, attr, None):
                    self._set(mod, attr, _public_filename(getattr(mod, attr)))
            for attr in ("__spec__", "__loader__"):  # they hold the absolute paths too
                if getattr(mod, attr, None) is not None:
                    self._set(mod, attr, None)
            seen: set[int] = set()
            for obj in list(vars(mod).values()):
                if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                    found = list(vars(obj).values())
                elif isinstance(obj, dict):  # registries of functions and lambdas
                    found = list(obj.values())
                elif isinstance(obj, (list, tuple)):
                    found = list(obj)
                else:
                    found = [obj]
                for f in found:
                    if (inspect.isfunction(f) and f.__module__ == mod.__name__
                            and id(f) not in seen):
                        seen.add(id(f))
                        self._set(f, "__code__", _public_code(f.__code__))
        base = nn_tracer.SerializedFrame

        class PublicFrame(base):  # type: ignore[misc, valid-type]
            @classmethod
            def of(cls, frame: Any) -> Any:
                code = frame.f_code
                return base(_public_filename(code.co_filename), code.co_firstlineno,
                            code.co_name)

        self._set(nn_tracer, "SerializedFrame", PublicFrame)
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()


def _network_error(host: str, exc: BaseException) -> RemoteError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RemoteError(f"cannot reach NDIF at {host} ({first}); check your network and "
                       "NDIF_HOST, or run with backend='local'")


def websocket_transport(backend: Any, request: Any, blob: bytes) -> Iterable[Any]:
    """Send a serialized request and yield the server's raw status messages.

    Subscribes to ``{ws_host}/subscribe`` first (the server answers with a session id),
    POSTs ``{host}/request`` with the routing envelope and the compressed payload, then
    yields every websocket message (JSON text, or a binary frame carrying the result).
    """
    import websocket

    try:
        conn = websocket.create_connection(
            f"{backend.ws_host}/subscribe",
            header={"ndif-api-key": backend.api_key} if backend.api_key else None)
    except (OSError, websocket.WebSocketException) as exc:
        raise _network_error(backend.host, exc) from None
    try:
        request.session_id = json.loads(conn.recv())["session_id"]
        try:
            first = backend._post(request, blob)
        except Exception as exc:
            raise RemoteError(f"NDIF refused the request: {exc}") from None
        yield first
        while True:
            try:
                yield conn.recv()
            except (OSError, websocket.WebSocketException) as exc:
                raise _network_error(backend.host, exc) from None
    finally:
        conn.close()


#: how requests travel (replace to test without a network: see encode_result_frame)
transport: Callable[[Any, Any, bytes], Iterable[Any]] = websocket_transport


def encode_result_frame(job_id: str, result: dict, compress: bool = True) -> bytes:
    """The binary COMPLETED frame a server sends with the saved values inline."""
    from nnsight.schema.response import ResponseModel, Status

    buf = io.BytesIO()
    torch.save(result, buf)
    data = buf.getvalue()
    if compress:
        import zstandard as zstd

        data = zstd.ZstdCompressor(level=6).compress(data)
    return ResponseModel(id=job_id, status=Status.COMPLETED, data=data).pickle()


def decode_request(blob: bytes, lm: Any, compress: bool = True) -> Any:
    """Rebuild the tracer a server would run from a request payload (for checks)."""
    from nnsight.schema.request import RequestModel

    tm = wrap_remote(lm)
    return RequestModel.deserialize(blob, tm._remoteable_persistent_objects(), compress=compress)


def _make_backend(key: str, host: str, api_key: str, emit: Callable[[str], Any],
                  progress: bool) -> Any:
    from nnsight.intervention.backends.display import StatusDisplay
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.response import ResponseModel, Status

    class NdifBackend(RemoteBackend):
        """nnsight's remote backend with reprlab's status lines, errors and transport."""

        def __init__(self) -> None:
            super().__init__(key, host=host, api_key=api_key, blocking=True)
            self.display = StatusDisplay(enabled=False)
            self.result: dict | None = None
            self.payload: bytes | None = None

        def note(self, response: ResponseModel) -> bool:
            status = response.status
            if status == Status.LOG:
                emit(response.description)
            else:
                line = f"[ndif {response.id[:8]}] {status.value.lower()}"
                emit(line + (f": {response.description}" if response.description else ""))
            if response.meta is not None:
                self.meta = response.meta
            if status == Status.ERROR:
                first = (response.description or "unknown error").strip().splitlines()
                raise RemoteError(f"the session failed on NDIF: {first[-1] if first else ''}")
            return status == Status.COMPLETED

        def download_result(self, url: Any) -> Any:
            if isinstance(url, (bytes, bytearray)) or not url:
                return super().download_result(url)
            import httpx
            from tqdm.auto import tqdm

            buf = io.BytesIO()
            try:
                with httpx.Client(timeout=httpx.Timeout(10.0, read=600.0)) as client, \
                        client.stream("GET", url) as resp:
                    resp.raise_for_status()
                    total = int(resp.headers.get("Content-Length", 0)) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="downloading results",
                              disable=not progress) as bar:
                        for chunk in resp.iter_bytes(chunk_size=128 * 1024):
                            buf.write(chunk)
                            bar.update(len(chunk))
            except httpx.HTTPError as exc:
                raise _network_error(url.split("/")[2] if "//" in url else url, exc) from None
            return self.finalize(buf.getvalue())

        def finalize(self, content: bytes) -> Any:
            if self.compress:
                import zstandard as zstd

                content = zstd.ZstdDecompressor().decompress(content)
            return load_result(content)

        @staticmethod
        def parse(message: Any) -> Any:
            if isinstance(message, (bytes, bytearray)):
                return ResponseModel(**load_result(bytes(message)))
            return RemoteBackend.parse(message)

        def _serialize(self, tracer: Any) -> bytes:
            import reprlab.positions

            with _PublicPaths([rt, reprlab.positions]):
                return super()._serialize(tracer)

        def request(self, request: Any, tracer: Any) -> Any:
            self.payload = self._serialize(tracer)
            for message in transport(self, request, self.payload):
                response = message if isinstance(message, ResponseModel) else self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    return result
            raise RemoteError("the NDIF connection closed before the session completed")

        def __call__(self, tracer: Any = None) -> Any:
            self.result = super().__call__(tracer)
            return self.result

    return NdifBackend()


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
    backend = _make_backend(model_key(tm), host, api_key, emit, progress)
    _register_runtime()
    results = _interpret(tm, [tm], [rt.call_dict], plan, print, backend=backend)
    return dict(results)
