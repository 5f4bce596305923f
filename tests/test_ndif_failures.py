"""Remote failures answered in one line: a timeout, a refused request, a completed job whose
result cannot be fetched (too large for the inline path, no object store reachable), a bad
host or timeout setting. No network: the websocket or the transport is replaced."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny

from reprlab.errors import ConfigError
from reprlab.sessions import nnsight_backend as nb
from reprlab.sessions import transport as tp
from reprlab.sessions.errors import RemoteError

pytest.importorskip("nnsight")
websocket = pytest.importorskip("websocket")


def _session(lm, **kw):
    import reprlab

    with reprlab.session(lm, backend="nnsight", remote=True, **kw) as s, s.trace("a b c") as t:
        t.save(t.read("layers.0", pos=-1), "h")
    return s


@pytest.fixture
def lm(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "k")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")
    monkeypatch.setattr(nb, "model_key", lambda tm: "x:{}")
    return make_tiny("gpt2")


class _Conn:
    """A websocket that gives a session id, then the given messages, then silence."""

    def __init__(self, messages):
        self.messages = list(messages)
        self.timeout = "unset"

    def settimeout(self, t):
        self.timeout = t

    def recv(self):
        if self.messages:
            return self.messages.pop(0)
        raise websocket.WebSocketTimeoutException("timed out")

    def close(self):
        pass


def test_silent_server_times_out_in_one_line(lm, monkeypatch):
    conn = _Conn([json.dumps({"session_id": "s1"})])
    monkeypatch.setattr(websocket, "create_connection", lambda *a, **k: conn)
    from nnsight.intervention.backends.remote import RemoteBackend

    monkeypatch.setattr(RemoteBackend, "_post",
                        lambda self, request, blob: json.dumps({"id": "j1", "status": "QUEUED"}))
    monkeypatch.setenv("REPRLAB_NDIF_TIMEOUT", "0.5")
    with pytest.raises(RemoteError, match=r"no answer from NDIF at http://127.0.0.1:9 for "
                                          r"0.5 s") as err:
        _session(lm)
    assert conn.timeout == 0.5 and "\n" not in str(err.value)


def test_refused_request_is_one_line_with_the_server_detail(lm, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.intervention.backends.remote import RemoteError as NnsightError

    monkeypatch.setattr(websocket, "create_connection",
                        lambda *a, **k: _Conn([json.dumps({"session_id": "s1"})]))

    def refuse(self, request, blob):
        raise NnsightError("Failed to send request: Model x is not deployed.\nTraceback ...")

    monkeypatch.setattr(RemoteBackend, "_post", refuse)
    with pytest.raises(RemoteError) as err:
        _session(lm)
    assert str(err.value) == ("NDIF refused the request: Failed to send request: Model x is "
                              "not deployed.")


def test_result_behind_an_unreachable_url_is_one_line(lm, monkeypatch):
    def fake(backend, request, blob):   # too large for the inline path: a URL comes instead
        yield json.dumps({"id": "j1", "status": "RECEIVED"})
        yield json.dumps({"id": "j1", "status": "COMPLETED", "data": "http://127.0.0.1:9/j1.pt"})

    monkeypatch.setattr(tp, "transport", fake)
    with pytest.raises(RemoteError, match="cannot reach NDIF at 127.0.0.1:9") as err:
        _session(lm)
    assert "\n" not in str(err.value)


def test_completed_without_result_is_one_line(lm, monkeypatch):
    def fake(backend, request, blob):
        yield json.dumps({"id": "j1", "status": "COMPLETED"})

    monkeypatch.setattr(tp, "transport", fake)
    with pytest.raises(RemoteError, match="sent no result"):
        _session(lm)


def test_error_status_keeps_the_servers_last_line(lm, monkeypatch):
    def fake(backend, request, blob):
        yield json.dumps({"id": "j1", "status": "ERROR",
                          "description": "Traceback (most recent call last):\n  File x\n"
                                         "IndexError: index 9 is out of bounds"})

    monkeypatch.setattr(tp, "transport", fake)
    with pytest.raises(RemoteError) as err:
        _session(lm)
    assert str(err.value) == "the session failed on NDIF: IndexError: index 9 is out of bounds"


@pytest.mark.parametrize("raw", ["0", "-3", "soon"])
def test_bad_timeout_setting_is_refused(raw, monkeypatch):
    monkeypatch.setenv("REPRLAB_NDIF_TIMEOUT", raw)
    with pytest.raises(ConfigError, match="REPRLAB_NDIF_TIMEOUT"):
        tp.request_timeout()


def test_ndif_host_option(monkeypatch):
    monkeypatch.delenv("NDIF_HOST", raising=False)
    with pytest.raises(ConfigError, match="http://"):
        tp.use_host("127.0.0.1:8001")
    tp.use_host("http://127.0.0.1:8001/")
    import os

    assert os.environ["NDIF_HOST"] == "http://127.0.0.1:8001"
    assert nb.api_settings()[0] == "http://127.0.0.1:8001"
