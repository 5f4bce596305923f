"""Sessions: local and nnsight backends agree exactly; order, exit, logs, errors, remote."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny

import reprlab.sessions as S
from reprlab.errors import ReprlabError, SiteError
from reprlab.hooks import edit, hook_count, record

BACKENDS = ("local", "nnsight")
SRC = "The Eiffel Tower is in the city of"
TGT = "Buckingham Palace is in the city of"


def _patch_session(lm, backend, **kw):
    with S.session(lm, backend=backend, **kw) as s:
        with s.trace(SRC) as t1:
            h = t1.read("layers.-1", pos=-1)
            t1.save(h, "h")
            t1.save(t1.logits[:, -1].argmax(-1), "top1")
        with s.trace(TGT) as t2:
            t2.write("layers.1", pos=-1, value=h)
            t2.save(t2.logits, "patched")
            t2.save(t2.read("layers.2"), "after")
        s.log("patched")
    return s


def _manual(lm):
    a, b = lm.encode([SRC]), lm.encode([TGT])
    with torch.no_grad():
        with record(lm, "layers.-1") as c:
            top1 = lm.model(**a).logits[:, -1].argmax(-1)
        h = c[f"layers.{lm.arch.n_layers - 1}"][:, -1]

        def fn(x):
            x = x.clone()
            x[:, -1] = h
            return x
        with edit(lm, {"layers.1": fn}):
            patched = lm.model(**b).logits
    return h, top1, patched


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_backends_identical_and_match_manual_hooks(arch):
    lm = make_tiny(arch)
    n_hooks = hook_count(lm.model)
    res = {b: _patch_session(lm, b).results for b in BACKENDS}
    for name in ("h", "top1", "patched", "after"):
        assert torch.equal(res["local"][name], res["nnsight"][name]), name
    h, top1, patched = _manual(lm)
    assert torch.equal(res["local"]["h"], h)
    assert torch.equal(res["local"]["top1"], top1)
    assert torch.equal(res["local"]["patched"], patched)
    # the patch changed the target's logits, and every hook was removed
    with torch.no_grad():
        clean = lm.model(**lm.encode([TGT])).logits
    assert not torch.allclose(clean, patched)
    assert hook_count(lm.model) == n_hooks


def test_values_ops_and_saves():
    lm = make_tiny("gpt2")
    out = {}
    for b in BACKENDS:
        with S.session(lm, backend=b) as s:
            with s.trace(["a short one", "a longer prompt here"]) as t:
                h = t.read("layers.0", pos="mean")
                p = t.logits[:, -1].softmax(-1)
                top = p.topk(3)
                t.save((h * 2 + 1).norm(dim=-1), "norm")
                t.save(top[1], "idx")
            d = s.save(h[0] - h[1], "diff")
        out[b] = s.results
        assert d.value.shape == (lm.arch.hidden_size,)
    for k in ("norm", "idx", "diff"):
        assert torch.equal(out["local"][k], out["nnsight"][k])
    assert out["local"]["idx"].shape == (2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_runs_no_later_trace(backend):
    lm = make_tiny("gpt2")
    calls = []
    handle = lm.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with S.session(lm, backend=backend) as s:
            with s.trace("one") as t:
                first = t.save(t.read("layers.0", pos=-1), "first")
            s.exit()
            with s.trace("two") as t:
                second = t.save(t.read("layers.0", pos=-1), "second")
    finally:
        handle.remove()
    assert len(calls) == 1
    assert set(s.results) == {"first"}
    assert first.value.shape == (1, lm.arch.hidden_size)
    with pytest.raises(S.NotRunError, match="did not run"):
        _ = second.value


@pytest.mark.parametrize("backend", BACKENDS)
def test_conditional_exit_and_logs_in_order(backend):
    lm = make_tiny("gpt2")
    seen = []
    with S.session(lm, backend=backend, on_log=seen.append) as s:
        s.log("start")
        with s.trace("hello") as t:
            n = t.read("layers.0", pos=-1).norm()
        s.log("norm", n)
        s.exit(when=n < 0)          # false: the session goes on
        with s.trace("world") as t:
            t.save(t.read("layers.0", pos=-1), "second")
        s.log("end")
        s.exit(when=n > 0)          # true: stops here
        with s.trace("never") as t:
            t.save(t.read("layers.0", pos=-1), "third")
    assert seen == s.logs
    assert [m.split()[0] for m in seen] == ["start", "norm", "end"]
    assert float(seen[1].split()[1]) > 0
    assert "second" in s.results and "third" not in s.results


def test_cross_model_patching():
    base, tuned = make_tiny("gpt2", seed=0), make_tiny("gpt2", seed=1)
    res = {}
    for b in BACKENDS:
        with S.session(base, tuned, backend=b) as s:
            with s.trace(SRC, model=base) as t:
                h = t.read("layers.1")
            with s.trace(SRC, model=tuned) as t:
                t.write("layers.1", h)
                t.save(t.logits, "logits")
        res[b] = s.results["logits"]
    assert torch.equal(res["local"], res["nnsight"])
    enc = base.encode([SRC])
    with torch.no_grad():
        with record(base, "layers.1") as c:
            base.model(**enc)
        with edit(tuned, {"layers.1": lambda x: c["layers.1"]}):
            want = tuned.model(**enc).logits
        plain = tuned.model(**enc).logits
    assert torch.equal(res["local"], want)
    assert not torch.allclose(want, plain)


def test_bad_input_one_clear_line():
    lm = make_tiny("gpt2")
    with pytest.raises(SiteError, match="unknown site"):
        with S.session(lm) as s, s.trace("x") as t:
            t.read("layers.bogus")
    for b in BACKENDS:   # wrong shape, raised while running; later traces do not run
        calls = []
        handle = lm.model.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        try:
            with pytest.raises(S.ShapeError, match=r"shape \[1, 64\].*\[1, 32\]"):
                with S.session(lm, backend=b) as s:
                    with s.trace("x") as t:
                        t.write("layers.0", torch.zeros(1, 64), pos=-1)
                    with s.trace("y") as t:
                        t.save(t.read("layers.0"), "h")
        finally:
            handle.remove()
        assert calls == []  # the failing forward stopped at layer 0 and nothing else ran
    with pytest.raises(S.SessionError, match="hidden size"):
        S.session(lm, make_tiny("gpt2", hidden=64))
    with S.session(lm) as s:
        with s.trace("x") as t:
            h = t.read("layers.0")
            unsaved = h + 1
            with pytest.raises(S.NotRunError, match="has not run"):
                _ = h.value
    with pytest.raises(S.NotRunError, match="not saved"):
        _ = unsaved.value
    with pytest.raises(S.SessionError, match="later in the same forward"):
        with S.session(lm) as s, s.trace("x") as t:
            t.write("layers.0", t.read("layers.2"))
    with pytest.raises(SiteError, match="no logits"):
        with S.session(make_tiny("bert")) as s, s.trace("x") as t:
            _ = t.logits
    with pytest.raises(S.SessionError, match="another session"):
        with S.session(lm) as s1, s1.trace("x") as t1:
            h = t1.read("layers.0")
            with S.session(lm) as s2, s2.trace("y") as t2:
                t2.write("layers.0", h)
    for err in (S.ShapeError, S.NotRunError, S.SessionError, S.RemoteError):
        assert issubclass(err, ReprlabError)


# -- remote (no network here: the transport is replaced) --------------------------------

def test_remote_request_built_compressed_and_deserialisable(monkeypatch):
    import zstandard

    from reprlab.sessions import nnsight_backend as nb
    from reprlab.sessions import transport as tp

    lm = make_tiny("gpt2")
    expected = _patch_session(lm, "local").results
    sent = {}

    def fake_transport(backend, request, blob):
        sent["key"], sent["compress"], sent["blob"] = request.model_key, request.compress, blob
        assert blob[:4] == b"\x28\xb5\x2f\xfd"              # zstd frame magic
        raw = zstandard.ZstdDecompressor().decompress(blob)
        sent["raw"] = len(raw)
        tracer = nb.decode_request(blob, lm, compress=True)
        assert "plan" in tracer.info.frame.f_locals        # the session plan travels
        code = tracer.info.code.co_consts
        assert code is not None
        job = "job-123456789"
        yield json.dumps({"id": job, "status": "RECEIVED"})
        yield json.dumps({"id": job, "status": "QUEUED", "description": "position 1"})
        yield json.dumps({"id": job, "status": "RUNNING"})
        yield json.dumps({"id": job, "status": "LOG", "description": "patched"})
        yield nb.encode_result_frame(job, {"results": expected})

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(tp, "transport", fake_transport)
    monkeypatch.setattr(nb, "model_key", lambda tm: "nnsight.modeling.transformers."
                        "TransformersModel:{\"repo_id\": \"tiny/gpt2\"}")
    seen = []
    s = _patch_session(lm, "nnsight", remote=True, on_log=seen.append)
    assert sent["compress"] is True and sent["key"].endswith('"tiny/gpt2"}')
    assert sent["raw"] > len(sent["blob"]) * 0 and len(sent["blob"]) > 100
    for k in ("h", "top1", "patched"):
        assert torch.equal(s.results[k], expected[k])
    statuses = [m.split("] ")[1] if m.startswith("[ndif") else m for m in seen]
    assert statuses == ["received", "queued: position 1", "running", "patched", "completed"]


def test_remote_without_key_is_one_clear_line(monkeypatch):
    from reprlab.sessions import nnsight_backend as nb

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nb, "api_settings", lambda: ("https://api.ndif.us", None))
    with pytest.raises(S.RemoteError, match="no NDIF API key: set NDIF_API_KEY") as info:
        _patch_session(make_tiny("gpt2"), "nnsight", remote=True)
    assert "\n" not in str(info.value)
    with pytest.raises(ReprlabError, match="remote=True needs backend='nnsight'"):
        S.session(make_tiny("gpt2"), remote=True)


def test_remote_without_network_is_one_clear_line(monkeypatch):
    from reprlab.sessions import nnsight_backend as nb

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(nb, "api_settings", lambda: ("http://127.0.0.1:9", "test-key"))
    monkeypatch.setattr(nb, "model_key", lambda tm: "x:{}")
    with pytest.raises(S.RemoteError, match="cannot reach NDIF at http://127.0.0.1:9") as info:
        _patch_session(make_tiny("gpt2"), "nnsight", remote=True)
    assert "\n" not in str(info.value)
