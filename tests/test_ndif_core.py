"""reprlab's remote requests executed by NDIF's own server code, in this process.

The exact bytes nnsight's RemoteBackend would POST for each remote-capable workflow go
through ndif's ``prepare_traced_block`` / ``execute_traced_block`` beside the mini toy model
(loaded from its NDIF model key, as an actor loads it), and the server's frames come back
through reprlab's response reader. Results must equal the local backend's bit for bit (the
same float32 ops in the same order on the same CPU)."""

from __future__ import annotations

import pickletools

import pytest
import torch

import reprlab
from reprlab.sessions import nnsight_backend as nb
from reprlab.sessions import transport as tp
from reprlab.sessions.errors import RemoteError
from reprlab.sessions.results import _safe_global

pytest.importorskip("nnsight")
pytest.importorskip("ndif.services.ray.deployments.modeling.nns",
                    reason="NDIF server code: bash tests/tools/install_ndif.sh")

from reprlab.ndif_local.core import InProcessNdif, local_model_key  # noqa: E402

SRC = "The Eiffel Tower is in the city of"
TGT = "Buckingham Palace is in the city of"


@pytest.fixture(scope="module")
def lm(toy_mini):
    return reprlab.load_model(str(toy_mini.base))


@pytest.fixture(scope="module")
def server(lm):
    return InProcessNdif(local_model_key(lm.source))


@pytest.fixture
def remote(server, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "local-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")
    monkeypatch.setattr(tp, "transport", server.transport)
    return server


def _seed001(lm, backend, **kw):
    with reprlab.session(lm, backend=backend, **kw) as s:
        with s.trace(SRC) as t1:
            h = t1.read("layers.-2", pos=-1)             # shared on the server, never saved
        with s.trace(TGT) as t2:
            t2.write("layers.-2", h, pos=-1)
            t2.save(t2.logits[:, -1].argmax(-1), "top")
            t2.save(t2.logits, "logits")
        s.log("patched")
    return s


def test_client_names_a_local_folder_without_the_hub(lm):
    assert nb.model_key(nb.wrap_remote(lm)) == local_model_key(lm.source)


def test_patching_session_equals_local_and_shares_values_on_the_server(lm, remote):
    local = _seed001(lm, "local").results
    seen: list[str] = []
    s = _seed001(lm, "nnsight", remote=True, on_log=seen.append)
    assert set(s.results) == {"top", "logits"}           # h stayed on the server
    assert torch.equal(s.results["logits"], local["logits"])
    assert torch.equal(s.results["top"], local["top"])
    unpatched = _plain_logits(lm, TGT)
    assert not torch.equal(unpatched, local["logits"])   # the patch changed something
    assert [m.split("] ")[1].split(":")[0] if m.startswith("[ndif") else m for m in seen] == [
        "received", "running", "patched", "completed"]   # s.log comes back as a LOG status
    assert remote.requests[-1]["compress"] is True


def _plain_logits(lm, text):
    with reprlab.session(lm) as s, s.trace(text) as t:
        t.save(t.logits, "l")
    return s.results["l"]


@pytest.mark.parametrize("mode", ["session", "steps"])
def test_probe_loop_weights_and_losses_equal_local(lm, remote, mode):
    from reprlab.sessions.remote_probe import train_probe_in_session

    texts = ["Paris is in France.", "Rome is in Italy.", "Tokyo is in Japan.",
             "The cat sat.", "A dog ran.", "Birds fly high.", "Lima is in Peru.", "Fish swim."]
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    kw = dict(site="layers.0", epochs=2, batch_size=4, lr=0.05, seed=3, mode=mode,
              progress=False)
    local = train_probe_in_session(lm, texts, labels, backend="local", **kw)
    before = len(remote.requests)
    far = train_probe_in_session(lm, texts, labels, backend="nnsight", remote=True, **kw)
    assert len(remote.requests) - before == (1 if mode == "session" else 4)
    assert torch.equal(far.weight, local.weight) and torch.equal(far.bias, local.bias)
    assert torch.equal(far.losses, local.losses)
    assert far.weight.abs().sum() > 0                    # it trained


def test_capture_and_patch_sweep_equal_local(lm, remote):
    from reprlab.probes.session_run import session_features
    from reprlab.sessions.patching import sweep

    texts = ["Paris is in France.", "The cat sat on the mat.", "Rome."]
    kw = dict(site="layers.1", position="last", batch_size=2, progress=False)
    local = session_features(lm, texts, backend="local", remote=False, **kw)
    far = session_features(lm, texts, backend="nnsight", remote=True, **kw)
    assert far.shape == (3, lm.arch.hidden_size) and torch.equal(far, local)

    src, tgt = "The Colosseum is in the city of", "Big Ben is in the city of"
    skw = dict(sites="layers.*", metric="logit-diff", tokens=[" Rome", " London"])
    a = sweep(lm, src, tgt, backend="local", **skw)
    b = sweep(lm, src, tgt, backend="nnsight", remote=True, **skw)
    assert torch.equal(a.values, b.values) and a.target_clean == b.target_clean
    assert a.values.std() > 0


def test_server_error_is_one_line_with_the_server_message(lm, remote, toy_mini):
    from conftest import make_tiny

    other = InProcessNdif(remote.model_key, model=_wrapped(make_tiny("gpt2")))
    tp.transport = other.transport
    with pytest.raises(RemoteError) as err:
        _seed001(lm, "nnsight", remote=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("the session failed on NDIF:")


def _wrapped(tiny):
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(tiny.model, tokenizer=tiny.tokenizer)


def test_unknown_model_is_refused_in_one_line(lm, remote):
    tp.transport = InProcessNdif(local_model_key("/nonexistent-model"), model=remote.model
                                 ).transport
    with pytest.raises(RemoteError, match="not deployed") as err:
        _seed001(lm, "nnsight", remote=True)
    assert "\n" not in str(err.value)


def test_server_result_frame_holds_only_allowed_types(lm, remote):
    frames = []
    real = remote.transport

    def keep(backend, request, blob):
        for f in real(backend, request, blob):
            frames.append(f)
            yield f

    tp.transport = keep
    _seed001(lm, "nnsight", remote=True)
    frame = next(f for f in frames if isinstance(f, bytes))
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(frame)) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    globals_ = {arg for op, arg, _ in pickletools.genops(pkl)
                if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}
    assert globals_ <= {"nnsight.schema.response Status"}
    assert all(_safe_global(*g.split(" ")) for g in globals_)


def test_patch_command_remote_prints_what_the_local_run_prints(lm, remote, tmp_path, capsys,
                                                               monkeypatch):
    from reprlab.cli import main

    monkeypatch.delenv("NDIF_HOST")
    args = ["patch", "--model", lm.source, "--source", SRC, "--target", TGT, "--from",
            "layers.-2", "--pos", "-1"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    local = capsys.readouterr().out
    n = len(remote.requests)
    assert main(args + ["--backend", "nnsight", "--remote", "--ndif-host",
                        "http://127.0.0.1:8001", "--out", str(tmp_path / "far")]) == 0
    far = capsys.readouterr().out
    assert len(remote.requests) > n
    assert far.replace("far", "local") == local and "\t" in local
