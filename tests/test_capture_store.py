from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TEXTS, make_tiny, save_tiny

from reprlab.capture import capture
from reprlab.errors import SiteError, StoreError
from reprlab.positions import pool
from reprlab.store import ActivationStore

MANY = [f"{t} number {i} {'and more words ' * (i % 7)}" for i in range(60) for t in TEXTS[:1]]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_capture_equals_hidden_states_exactly(tmp_path, arch):
    lm = make_tiny(arch)
    store = capture(lm, TEXTS, "embed,layers.*", "last,first,mean,middle,1,all", tmp_path / "s",
                    batch_size=1, progress=False)
    for r, text in enumerate(TEXTS):  # one row per batch: no padding, exact equality
        enc = lm.encode([text])
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        m = enc["attention_mask"]
        for i, site in enumerate(["embed", "layers.0", "layers.1"]):
            for p in ("last", "first", "mean", "middle", "1"):
                assert torch.equal(store[site, p][r], pool(hs[i], m, p)[0]), (site, p)
        flat = store["layers.0", "all"][store.token_index[:, 0] == r]
        assert torch.equal(flat, hs[1][0])


def test_batched_capture_matches_and_pools_padding_correctly(tmp_path):
    lm = make_tiny("gpt2")
    store = capture(lm, MANY, "layers.*", "last,mean", tmp_path / "s", batch_size=7,
                    progress=False)
    for side in ("left", "right"):
        enc = lm.encode(MANY, padding_side=side)
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        for p in ("last", "mean"):
            ref = pool(hs[2], enc["attention_mask"], p)
            assert torch.allclose(store["layers.1", p], ref, atol=1e-5), (side, p)
    lm.tokenizer.padding_side = "left"
    left = capture(lm, MANY, "layers.*", "last,mean", tmp_path / "left", batch_size=7,
                   progress=False)
    assert torch.allclose(left["layers.2", "last"], store["layers.2", "last"], atol=1e-5)
    assert store.n_rows == len(MANY) and store.ids[0] == "0"


def test_stop_early_and_cache_hit_do_no_extra_forward(tmp_path):
    lm = make_tiny("gpt2")
    calls = {"late": 0, "model": 0}
    late = lm.model.get_submodule(f"{lm.arch.layers_path}.2")
    h1 = late.register_forward_hook(lambda *a: calls.__setitem__("late", calls["late"] + 1))
    h2 = lm.model.register_forward_pre_hook(lambda *a: calls.__setitem__("model", calls["model"] + 1))
    try:
        s1 = capture(lm, TEXTS, "layers.0", "mean", tmp_path / "s", progress=False)
        assert calls["late"] == 0 and calls["model"] > 0 and not s1.cache_hit
        before = calls["model"]
        s2 = capture(lm, TEXTS, "layers.0", "mean", tmp_path / "s", progress=False)
        assert s2.cache_hit and calls["model"] == before
    finally:
        h1.remove()
        h2.remove()
    assert torch.equal(s1["layers.0", "mean"], s2["layers.0", "mean"])


def test_store_dtypes_and_memory_map(tmp_path):
    lm = make_tiny("gpt2")
    ref = capture(lm, TEXTS, "layers.1", "mean", tmp_path / "f32", progress=False)
    for dt, torch_dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        s = capture(lm, TEXTS, "layers.1", "mean", tmp_path / dt, dtype=dt, progress=False)
        t = s["layers.1", "mean"]
        assert t.dtype == torch_dt
        assert torch.equal(t, ref["layers.1", "mean"].to(torch_dt))
    from safetensors.torch import load_file  # files are valid safetensors

    f = tmp_path / "f32" / ref.manifest["files"]["layers.1|mean"]["file"]
    assert torch.equal(load_file(str(f))["data"], ref["layers.1", "mean"])


def test_store_refuses_bad_states(tmp_path):
    lm = make_tiny("gpt2")
    s = capture(lm, TEXTS, "layers.1", "mean", tmp_path / "s", progress=False)
    with pytest.raises(SiteError, match="holds layers.1"):
        s["layers.0", "mean"]
    with pytest.raises(SiteError, match="holds mean"):
        s["layers.1", "last"]
    other = make_tiny("gpt2", seed=1)
    with pytest.raises(StoreError, match="captured from"):
        ActivationStore.open(tmp_path / "s", expect_model=other.identity())
    ActivationStore.open(tmp_path / "s", expect_model=lm.identity())
    with pytest.raises(StoreError, match="different capture"):
        capture(other, TEXTS, "layers.1", "mean", tmp_path / "s", progress=False)
    f = tmp_path / "s" / s.manifest["files"]["layers.1|mean"]["file"]
    data = f.read_bytes()
    f.write_bytes(data[:-10])
    with pytest.raises(StoreError, match="truncated"):
        ActivationStore.open(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(StoreError, match="not a complete activation store"):
        ActivationStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore.open(tmp_path / "nope")


def test_unwritable_out(tmp_path):
    lm = make_tiny("gpt2")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write"):
        capture(lm, TEXTS, "layers.1", "mean", blocker / "store", progress=False)


_SCRIPT = """
import sys
import torch
from reprlab.capture import capture
torch.set_num_threads(1)  # as in the test process, so chunks from both are bitwise comparable
texts = [l.rstrip("\\n") for l in open(sys.argv[2])]
capture(sys.argv[1], texts, "layers.*", "last,mean,all", sys.argv[3], batch_size=4,
        chunk_rows=8, progress=False)
"""


def _digest(path: Path) -> dict:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            out[str(p.relative_to(path))] = p.read_bytes()
    man = json.loads((path / "manifest.json").read_text())
    out["files"] = json.dumps(man["files"], sort_keys=True).encode()
    return out


def test_kill_and_resume_gives_identical_store(tmp_path):
    model_dir = save_tiny(tmp_path / "model")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(MANY * 2))
    script = tmp_path / "cap.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "REPRLAB_CHUNK_DELAY": "0.3"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(model_dir), str(texts), str(out)],
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((out / ".partial").glob("chunk-*.safetensors"))) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "capture ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(StoreError, match="unfinished capture"):
        ActivationStore.open(out)
    done_before = len(list((out / ".partial").glob("chunk-*.safetensors")))
    assert 3 <= done_before < 15
    from reprlab.models import load_model

    again = load_model(str(model_dir))
    rows = texts.read_text().split("\n")
    resumed = capture(again, rows, "layers.*", "last,mean,all", out, batch_size=4, chunk_rows=8,
                      progress=False)
    assert not resumed.cache_hit and resumed.stats["resumed_chunks"] == done_before
    ref = tmp_path / "ref"
    capture(again, rows, "layers.*", "last,mean,all", ref, batch_size=4, chunk_rows=8,
            progress=False)
    assert _digest(out) == _digest(ref)
    assert not (out / ".partial").exists()
