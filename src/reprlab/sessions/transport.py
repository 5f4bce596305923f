"""The remote transport: where a request goes, how it travels, and the nnsight backend
that sends it.

Host: ``NDIF_HOST`` / nnsight's ``CONFIG.API.HOST`` (or ``--ndif-host``); key:
``NDIF_API_KEY`` / ``CONFIG.API.APIKEY``. The API key goes to whatever host is named, so a
host other than the default is announced once with a warning. A request is serialised by
nnsight's ``RemoteBackend`` (the traced block's source plus the objects it references,
zstd-compressed) with reprlab's file names relative to the package, not this machine's paths;
:data:`transport` sends it (``/subscribe`` websocket, then ``POST {host}/request``) and
yields the server's raw status messages, read by :mod:`reprlab.sessions.results`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from reprlab.sessions import runtime as rt
from reprlab.sessions.errors import RemoteError
from reprlab.sessions.results import load_result

logger = logging.getLogger(__name__)

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
    wait = getattr(backend, "timeout", None)
    conn.settimeout(wait)
    try:
        try:
            request.session_id = json.loads(conn.recv())["session_id"]
        except websocket.WebSocketTimeoutException:
            raise _timeout_error(backend.host, wait) from None
        except (OSError, websocket.WebSocketException, ValueError, KeyError) as exc:
            raise _network_error(backend.host, exc) from None
        try:
            first = backend._post(request, blob)
        except Exception as exc:
            raise RemoteError(f"NDIF refused the request: {_first_line(exc)}") from None
        yield first
        while True:
            try:
                yield conn.recv()
            except websocket.WebSocketTimeoutException:
                raise _timeout_error(backend.host, wait) from None
            except (OSError, websocket.WebSocketException) as exc:
                raise _network_error(backend.host, exc) from None
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _timeout_error(host: str, wait: float | None) -> RemoteError:
    return RemoteError(f"no answer from NDIF at {host} for {wait:g} s (the job may still be "
                       "queued there); raise the timeout (REPRLAB_NDIF_TIMEOUT, seconds) or "
                       "try again later")


def request_timeout(value: float | None = None) -> float | None:
    """Seconds to wait for each message from the server: ``value``, else
    ``REPRLAB_NDIF_TIMEOUT``, else no limit."""
    from reprlab.errors import ConfigError

    raw = value if value is not None else os.environ.get("REPRLAB_NDIF_TIMEOUT")
    if raw in (None, ""):
        return None
    try:
        wait = float(raw)
    except (TypeError, ValueError):
        wait = -1.0
    if not wait > 0:
        raise ConfigError(f"NDIF timeout {raw!r}: give a number of seconds > 0 "
                          "(REPRLAB_NDIF_TIMEOUT)")
    return wait


def use_host(url: str | None) -> None:
    """Point this process's remote requests at ``url`` (``--ndif-host``), as ``NDIF_HOST``."""
    from reprlab.errors import ConfigError

    if not url:
        return
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--ndif-host {url!r}: give a URL starting with http:// or "
                          "https://, e.g. http://127.0.0.1:8001")
    os.environ["NDIF_HOST"] = url.rstrip("/")


#: how requests travel (replace to test without a network: see encode_result_frame)
transport: Callable[[Any, Any, bytes], Iterable[Any]] = websocket_transport


def make_backend(key: str, host: str, api_key: str, emit: Callable[[str], Any],
                 progress: bool, timeout: float | None = None) -> Any:
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
            self.timeout = timeout

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
            if isinstance(url, (bytes, bytearray)):
                return super().download_result(url)
            if not url:
                raise RemoteError("NDIF reported the job completed but sent no result and no "
                                  "address to fetch it from; run it again")
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
