"""NDIF requests and results: no local paths leave the machine, no result can run code here,
and a host other than the default is announced (no network: the transport is replaced)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import make_tiny

import reprlab
from reprlab.sessions import nnsight_backend as nb
from reprlab.sessions import transport as tp
from reprlab.sessions.errors import RemoteError

pytest.importorskip("nnsight")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_result_with_foreign_objects_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"results": {"h": torch.ones(2)}, "x": _Evil(marker)}, buf)
    with pytest.raises(RemoteError, match="objects other than tensors"):
        nb.load_result(buf.getvalue())
    assert not marker.exists()


def test_plain_result_loads():
    buf = io.BytesIO()
    torch.save({"results": {"h": torch.arange(6.0).reshape(2, 3), "n": [1, 2.5, "a"]}}, buf)
    got = nb.load_result(buf.getvalue())
    assert torch.equal(got["results"]["h"], torch.arange(6.0).reshape(2, 3))
    assert got["results"]["n"] == [1, 2.5, "a"]


def test_custom_host_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="reprlab.sessions.nnsight_backend"):
        assert nb.warn_custom_host("https://ndif.example.org")
        assert not nb.warn_custom_host("https://ndif.example.org")
        assert not nb.warn_custom_host("https://api.ndif.us")
    assert sum("not the default NDIF server" in r.message for r in caplog.records) == 1


def test_request_carries_no_local_paths_and_results_come_back(monkeypatch):
    import zstandard
    from test_sessions import _patch_session

    lm = make_tiny("gpt2")
    expected = _patch_session(lm, "local").results
    sent = {}

    def fake_transport(backend, request, blob):
        sent["raw"] = zstandard.ZstdDecompressor().decompress(blob)
        yield json.dumps({"id": "job-1", "status": "RECEIVED"})
        yield nb.encode_result_frame("job-1", {"results": expected})

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(tp, "transport", fake_transport)
    monkeypatch.setattr(nb, "model_key", lambda tm: "nnsight.modeling.transformers."
                        "TransformersModel:{\"repo_id\": \"tiny/gpt2\"}")
    s = _patch_session(lm, "nnsight", remote=True)
    root = str(Path(reprlab.__file__).resolve().parent.parent)
    assert root.encode() not in sent["raw"]
    assert b"reprlab/sessions/runtime.py" in sent["raw"]
    for k in ("h", "top1", "patched"):
        assert torch.equal(s.results[k], expected[k])
    # the runtime module is whole again afterwards
    import reprlab.sessions.runtime as rt

    assert Path(rt.__file__).is_absolute() and rt.__spec__ is not None
    assert Path(rt.call_kwargs.__code__.co_filename).is_absolute()
