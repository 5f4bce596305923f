"""A store's manifest is checked, not trusted: each lie below is refused on open."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TEXTS, make_tiny

from reprlab.capture import capture
from reprlab.errors import StoreError
from reprlab.store import ActivationStore


@pytest.fixture(scope="module")
def lm():
    return make_tiny("gpt2")


@pytest.fixture(scope="module")
def good(lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    capture(lm, TEXTS, "layers.0,layers.2", ["last", "mean", "all"], out, progress=False)
    return out


@pytest.fixture
def store(good, tmp_path) -> Path:
    dst = tmp_path / "s"
    shutil.copytree(good, dst)
    return dst


def _edit(store: Path, fn) -> None:
    p = store / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def _first(m: dict, pos: str = "last") -> dict:
    return m["files"][f"layers.0|{pos}"]


def _swap(m: dict) -> None:
    a, b = m["files"]["layers.0|last"], m["files"]["layers.2|last"]
    a["file"], b["file"] = b["file"], a["file"]
    a["sha256"], b["sha256"] = b["sha256"], a["sha256"]


def _set(path: list, value):
    def fn(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return fn


LIES = [
    ("path outside the store", lambda m: _first(m).update(file="../../../outside/x"),
     "outside the store"),
    ("absolute path", lambda m: _first(m).update(file="/etc/passwd"), "not a path inside"),
    ("swapped files", _swap, "holds"),
    ("rows edited", _set(["n_rows"], 99_999), "rows"),
    ("hidden size edited", _set(["hidden_size"], 64), "implies"),
    ("a file listed twice", lambda m: _first(m).update(file=_first(m, "mean")["file"]),
     "holds|both"),
    ("sites edited", _set(["sites"], ["layers.0"]), "do not match"),
    ("dtype edited", _set(["dtype"], "float16"), "implies"),
    ("tokens edited", _set(["n_tokens"], 3), "tokens"),
    ("files not a dict", _set(["files"], []), "do not match"),
    ("n_rows not a number", _set(["n_rows"], "many"), "malformed"),
]


@pytest.mark.parametrize("what,edit,needle", LIES, ids=[x[0] for x in LIES])
def test_manifest_lies_are_refused(store, what, edit, needle):
    _edit(store, edit)
    with pytest.raises(StoreError, match=needle):
        ActivationStore.open(store)


def test_outside_file_is_never_read(store, tmp_path, monkeypatch):
    """Even an outside file of the right shape and size is refused before reading."""
    shutil.copy(store / "data" / "0000.safetensors", tmp_path / "outside.safetensors")
    _edit(store, lambda m: _first(m).update(file="../outside.safetensors"))
    opened = []
    real = open

    def spy(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(StoreError, match="outside the store"):
        ActivationStore.open(store)
    assert not any("outside.safetensors" in p for p in opened)


def test_flipped_byte_is_caught_on_open(store):
    f = store / "data" / "0001.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x40
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum"):
        ActivationStore.open(store)
    # above the stated size it is opt-in: open(verify=False) reads the altered value
    s = ActivationStore.open(store, verify=False)
    assert s["layers.0", "mean"].shape[0] == len(TEXTS)
    with pytest.raises(StoreError, match="checksum"):
        s.verify()


def test_hash_check_on_open_is_off_above_the_limit(store, monkeypatch):
    f = store / "data" / "0001.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x40
    f.write_bytes(bytes(raw))
    monkeypatch.setenv("REPRLAB_VERIFY_MAX_BYTES", "10")
    ActivationStore.open(store)  # too big for the default check: structure only
    with pytest.raises(StoreError, match="checksum"):
        ActivationStore.open(store, verify=True)


def test_edited_rows_file_is_caught(store):
    p = store / "rows.json"
    rows = json.loads(p.read_text())
    rows["texts"][0] = "something else"
    p.write_text(json.dumps(rows))
    with pytest.raises(StoreError, match="rows.json"):
        ActivationStore.open(store)


def test_rows_file_with_fewer_rows_is_caught(store):
    p = store / "rows.json"
    rows = json.loads(p.read_text())
    for k in ("ids", "lengths", "texts"):
        rows[k] = rows[k][:-1]
    p.write_text(json.dumps(rows))
    with pytest.raises(StoreError, match="rows"):
        ActivationStore.open(store, verify=False)


def test_good_store_opens_and_reads_same_values(good, lm):
    s = ActivationStore.open(good)
    assert s.verified
    assert s["layers.2", "last"].shape == (len(TEXTS), lm.arch.hidden_size)
    m = s.manifest["files"]["layers.2|all"]
    assert m["shape"] == [s.manifest["n_tokens"], lm.arch.hidden_size] and m["dtype"] == "F32"


def test_cache_hit_removes_leftover_partial(store, lm):
    (store / ".partial").mkdir()
    (store / ".partial" / "chunk-00000.safetensors").write_bytes(b"x" * 100)
    s = capture(lm, TEXTS, "layers.0,layers.2", ["last", "mean", "all"], store, progress=False)
    assert s.cache_hit
    assert not (store / ".partial").exists()


def test_second_capture_into_same_out_says_who_holds_it(tmp_path, lm):
    from reprlab.lock import dir_lock

    out = tmp_path / "busy"
    out.mkdir()
    with dir_lock(out, what="a capture"):
        with pytest.raises(StoreError, match=r"in use by pid \d+"):
            capture(lm, TEXTS, "layers.0", ["last"], out, progress=False)
    # released: the capture now runs
    assert capture(lm, TEXTS, "layers.0", ["last"], out, progress=False).n_rows == len(TEXTS)


def test_full_disk_is_one_line_before_any_file(tmp_path, lm, monkeypatch):
    import reprlab.io as rio

    class Usage:
        free = 1000

    monkeypatch.setattr(rio.shutil, "disk_usage", lambda p: Usage)
    out = tmp_path / "full"
    with pytest.raises(StoreError, match=r"not enough space in .*full: it needs .*B, 1000 B"):
        capture(lm, TEXTS, "layers.0", ["last"], out, progress=False)
    assert not (out / "manifest.json").exists()
    assert not list((out / "data").glob("*.safetensors")) if (out / "data").exists() else True


def test_no_space_while_allocating_is_one_line(tmp_path, lm, monkeypatch):
    import reprlab.store as st

    def full(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "allocate", full)
    out = tmp_path / "nospace"
    with pytest.raises(StoreError, match=r"no space left in .*nospace/data; it needs"):
        capture(lm, TEXTS, "layers.0", ["last"], out, progress=False)
    assert not (out / "manifest.json").exists()


def test_files_are_allocated_not_sparse(good):
    for f in (good / "data").glob("*.safetensors"):
        st = f.stat()
        assert st.st_blocks * 512 >= st.st_size - 4096, f


def test_long_text_is_truncated_at_the_position_limit_and_counted(tmp_path, lm):
    long = " ".join(["word"] * 400)  # > 256 positions of the tiny GPT-2
    s = capture(lm, [long, "short"], "layers.0", ["last", "all"], tmp_path / "long",
                max_length=4096, progress=False)
    assert s.manifest["max_length"] == 256
    assert s.manifest["n_truncated"] == 1
    assert s.lengths[0] == 256
    assert torch.isfinite(s["layers.0", "last"]).all()
