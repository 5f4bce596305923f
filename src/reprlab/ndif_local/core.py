"""NDIF's execution core in this process: a request's bytes in, the server's frames out.

:class:`InProcessNdif` holds a model loaded the way an NDIF model actor loads it
(``Remotable.from_model_key`` on the deployment's model key, on the CPU) and answers a
request as the actor does (``ndif.services.ray.deployments.modeling``): the payload goes
through ``prepare_traced_block`` with ``BackendRequestModel.deserialize``, then
``execute_traced_block``; the saved values are written with the actor's
``cpu_pickle_module``, compressed as the actor's ``prepare_result`` does (zstd level 3 when
the request was compressed) and sent back inline in a pickled COMPLETED
``BackendResponseModel``, as ``/subscribe`` forwards it. A failure comes back as an ERROR
status carrying the server's message (the actor's ``format_error`` text).

Its :meth:`~InProcessNdif.transport` has the signature of reprlab's transport hook
(:data:`reprlab.sessions.remote.transport`), so a session sent with ``remote=True`` is
serialised by nnsight's ``RemoteBackend`` exactly as for a real server and its answer is read
by reprlab's own response reader. What this does not cover: HTTP, the websocket, Redis, the
queue, Ray and the sandbox runner process (the whole stack's job).

While the server side runs, ``reprlab`` cannot be imported (:func:`_without_reprlab`): an
NDIF server has no reprlab installed, so anything of ours the request needs must travel in it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ConfigError

logger = logging.getLogger(__name__)

TRANSFORMERS_CLASS = "nnsight.modeling.transformers.TransformersModel"


def need_ndif() -> None:
    """Refuse in one line when the NDIF server package is missing."""
    try:
        import ndif.services.ray.deployments.modeling.nns  # noqa: F401
    except ImportError:
        raise ConfigError("the NDIF server package is not installed; run "
                          "`bash tests/tools/install_ndif.sh` (ndif 0.1.2)") from None


def local_model_key(folder: str | Path, task: str = "text-generation") -> str:
    """NDIF's model key for a model folder on this machine (nnsight's key format, no hub)."""
    repo = str(Path(folder).resolve())
    return f"{TRANSFORMERS_CLASS}:" + json.dumps({"repo_id": repo, "revision": None,
                                                  "task": task})


def load_server_model(model_key: str, dtype: str = "float32") -> Any:
    """The model as an NDIF actor builds it from its key, on the CPU (the stock actor puts it
    on a GPU); its tokenizer is passed explicitly (see :mod:`reprlab.ndif_local.actor`)."""
    import warnings

    from nnsight.modeling.mixins.remotable import Remotable

    kwargs: dict[str, Any] = {}
    repo = json.loads(model_key.split(":", 1)[1]).get("repo_id", "")
    if repo and Path(repo).is_dir():
        from transformers import AutoTokenizer

        kwargs["tokenizer"] = AutoTokenizer.from_pretrained(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Remotable.from_model_key(model_key, dispatch=True, device="cpu", dtype=dtype,
                                         **kwargs)
    model._module.requires_grad_(False)
    return model


class _NoReprlab(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "reprlab" or name.startswith("reprlab."):
            raise ModuleNotFoundError(f"No module named {name!r} (not on the NDIF server)")
        return None


@contextlib.contextmanager
def _without_reprlab() -> Iterator[None]:
    """While the server side runs: ``import reprlab...`` fails, as on a real server."""
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules)
              if k == "reprlab" or k.startswith("reprlab.")}
    finder = _NoReprlab()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k == "reprlab" or k.startswith("reprlab.")]:
            sys.modules.pop(k)
        sys.modules.update(hidden)


class InProcessNdif:
    """One deployed model and NDIF's execution core, answering requests in this process."""

    def __init__(self, model_key: str, dtype: str = "float32", model: Any = None) -> None:
        need_ndif()
        self.model_key = model_key
        self.dtype_name = dtype
        self.model = model if model is not None else load_server_model(model_key, dtype)
        self.requests: list[dict] = []   # what each request carried (for checks)
        self.counter = 0

    def execute(self, payload: bytes, compress: bool, env: dict | None) -> tuple[bytes, list]:
        """The actor's ``execute`` + ``prepare_result``: the result blob as sent back, and the
        lines the block printed (the actor streams them back as LOG statuses)."""
        import zstandard
        from ndif.common.schema.request import BackendRequestModel
        from ndif.services.ray.deployments.modeling.nns import (
            block_scope,
            execute_traced_block,
            prepare_traced_block,
        )
        from ndif.services.ray.deployments.modeling.util import cpu_pickle_module, resolve_dtype

        self.model._remoteable_set_env(env)
        out = io.StringIO()
        with block_scope(), _without_reprlab(), contextlib.redirect_stdout(out):
            tracer, _ = prepare_traced_block(self.model, payload, compress,
                                             deserialize=BackendRequestModel.deserialize)
            saved = execute_traced_block(tracer, resolve_dtype(self.dtype_name))
            buffer = io.BytesIO()
            torch.save(saved, buffer, pickle_module=cpu_pickle_module())
        data = buffer.getvalue()
        data = zstandard.ZstdCompressor(level=3).compress(data) if compress else data
        return data, out.getvalue().splitlines()

    def respond(self, request: Any, blob: bytes) -> Iterator[Any]:
        """The frames a blocking client receives for one request (JSON text or bytes)."""
        from ndif.common.errors import RequestError
        from ndif.common.schema.response import BackendResponseModel
        from nnsight.schema.response import Status
        from nnsight.tracing.util import clean_traceback

        self.counter += 1
        job = f"{self.counter:08d}-inprocess"
        self.requests.append({"model_key": request.model_key, "compress": request.compress,
                              "bytes": len(blob), "env": request.env})

        def status(st: Status, description: str = "") -> str:
            return BackendResponseModel(id=job, status=st, description=description
                                        ).model_dump_json()

        yield status(Status.RECEIVED, "Your job has been received and is waiting to be queued.")
        if request.model_key != self.model_key:
            yield status(Status.ERROR, f"Model key {request.model_key} is not deployed here "
                                       f"(deployed: {self.model_key}).")
            return
        yield status(Status.RUNNING, "Your job has started running.")
        try:
            data, printed = self.execute(blob, request.compress, request.env)
        except Exception as exc:  # the server answers every failure with ERROR
            if isinstance(exc, RequestError):
                message = str(exc)
            else:
                tb = clean_traceback(exc.__traceback__)
                message = "".join(traceback.format_exception(type(exc), exc, tb))
            yield status(Status.ERROR, message)
            return
        for line in printed:
            yield status(Status.LOG, line)
        yield BackendResponseModel(id=job, status=Status.COMPLETED,
                                   description="Your job has been completed.", data=data,
                                   meta={"runtime": 0.0}).pickle()

    def transport(self, backend: Any, request: Any, blob: bytes) -> Iterator[Any]:
        """reprlab's transport hook: the request goes to this process's server."""
        request.session_id = f"session-{self.counter + 1}"
        yield from self.respond(request, blob)
