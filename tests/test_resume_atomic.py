"""Crash injection: a tracked run killed between any two writes, or in the middle of one,
resumes to exactly what an uninterrupted run produces (at one thread; see the thread note in
reprlab.drift.track)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import reprlab.io as rio
import reprlab.trainstate as ts


class Crash(BaseException):
    """Stands for the process dying: nothing may catch it."""


def _cfg(**kw):
    from reprlab.drift.tasks.grokking import preset

    return preset("tiny", **{"epochs": 20, "every": 5, **kw})


def _run(out: Path, cfg=None):
    from reprlab.drift.track import track_grokking

    return track_grokking(cfg or _cfg(), out, progress=False)


def _inject(monkeypatch, crash_at: int, mode: str) -> list[str]:
    """Make the ``crash_at``-th atomic write (0-based) die: ``before`` it starts, or ``mid``
    way (half the bytes in the temp file, the rename never happens)."""
    seen: list[str] = []
    real = rio.atomic_write_bytes

    def write(path, data):
        seen.append(Path(path).name)
        if len(seen) - 1 == crash_at:
            if mode == "mid":  # named as a real temporary file would be
                tmp = Path(path).parent / f".{Path(path).name}.crash1234.tmp"
                tmp.write_bytes(bytes(data)[: len(data) // 2])
            raise Crash(f"killed at write {crash_at} ({Path(path).name})")
        return real(path, data)

    monkeypatch.setattr(rio, "atomic_write_bytes", write)
    monkeypatch.setattr(ts, "atomic_write_bytes", write)
    return seen


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from reprlab.drift.state import STATE_FILE

    t = load_file(str(out / "track" / STATE_FILE))
    return {k: v for k, v in t.items() if not k.startswith("rng.")}


def _same(a, b, out_a: Path, out_b: Path) -> None:
    assert a.steps == b.steps
    assert a.history == b.history  # exact floats
    for site in a.clouds:
        assert torch.equal(a.clouds[site], b.clouds[site]), site
    sa, sb = _final_state(out_a), _final_state(out_b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return _run(out), out


def test_state_is_one_file(reference):
    from reprlab.drift.state import STATE_FILE

    _, out = reference
    names = {p.name for p in (out / "track").iterdir()}
    assert STATE_FILE in names and "state.json" not in names


@pytest.mark.parametrize("mode", ["before", "mid"])
def test_crash_at_every_write_resumes_exactly(reference, tmp_path, monkeypatch, mode):
    ref, ref_out = reference
    # count the writes of one run
    counter = tmp_path / "count"
    seen = _inject(monkeypatch, 10**9, mode)
    _run(counter)
    n_writes = len(seen)
    assert n_writes >= 3 * len(ref.steps)  # clouds, history, state per checkpoint
    monkeypatch.undo()
    for k in range(n_writes):
        out = tmp_path / f"{mode}-{k}"
        _inject(monkeypatch, k, mode)
        with pytest.raises(Crash):
            _run(out)
        monkeypatch.undo()
        resumed = _run(out)
        _same(ref, resumed, ref_out, out)
        assert not list((out / "track").glob(".state.safetensors.*.tmp"))


def test_legacy_two_file_state_still_resumes(reference, tmp_path):
    """A run saved in the old layout (weights file + JSON) resumes to the same result."""
    import json

    from safetensors.torch import load_file, save_file

    from reprlab.drift.state import STATE_FILE
    from reprlab.trainstate import read_train_state

    ref, ref_out = reference
    out = tmp_path / "legacy"
    _run(out, _cfg(epochs=10))
    d = out / "track"
    tensors, meta = read_train_state(d / STATE_FILE)
    legacy_t = {k: v for k, v in tensors.items() if k.startswith(("model.", "opt."))}
    save_file(legacy_t, str(d / "state.safetensors"))
    (d / "state.json").write_text(json.dumps({**meta["info"], "optimizer": meta["optimizer"],
                                              "scheduler": meta.get("scheduler"),
                                              "aliases": meta.get("aliases", {})}))
    cfg_file = d / "config.json"
    cfg_file.unlink()  # the epoch budget differs; the saved state is what matters
    resumed = _run(out)
    assert resumed.steps == ref.steps
    # weights and optimiser come back exactly; the legacy layout had no RNG, which the
    # full-batch grokking trainer does not use
    _same(ref, resumed, ref_out, out)
    assert not (d / "state.json").exists()
    assert set(load_file(str(d / STATE_FILE))) >= set(legacy_t)


def test_resume_at_default_thread_count_matches_within_rounding(tmp_path, monkeypatch):
    """At several threads two uninterrupted runs may already differ by float rounding
    (reduction order), so the guarantee there is closeness, not identity."""
    from reprlab.drift.track import track_grokking

    threads = max(2, os.cpu_count() or 1)
    cfg = _cfg(epochs=5)  # checkpoints 0 and 5: writes config, then 3 per checkpoint
    full = track_grokking(cfg, tmp_path / "full", progress=False, threads=threads)
    _inject(monkeypatch, 5, "before")  # inside the checkpoint at epoch 5
    with pytest.raises(Crash):
        track_grokking(cfg, tmp_path / "crash", progress=False, threads=threads)
    monkeypatch.undo()
    resumed = track_grokking(cfg, tmp_path / "crash", progress=False, threads=threads)
    assert resumed.steps == full.steps
    for a, b in zip(full.history, resumed.history, strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for site in full.clouds:
        torch.testing.assert_close(full.clouds[site], resumed.clouds[site], rtol=1e-4,
                                   atol=1e-5)
