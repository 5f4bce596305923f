"""Files reprlab writes respect the umask (mkstemp alone would make them 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from reprlab.io import atomic_write_bytes, current_umask, write_json
from reprlab.report import RunDir


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_current_umask_reads_without_changing(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    write_json(tmp_path / "b.json", {"x": 1})
    assert _mode(tmp_path / "a.bin") == expected
    assert _mode(tmp_path / "b.json") == expected


def test_a_rewrite_gets_the_umask_mode_again(tmp_path, umask):
    p = tmp_path / "r.json"
    write_json(p, {})
    os.chmod(p, 0o600)  # a file left by an older version
    umask(0o002)
    write_json(p, {"again": True})
    assert _mode(p) == 0o664


def test_run_directory_files_are_group_readable(tmp_path, umask):
    umask(0o002)
    run = RunDir.create(tmp_path / "run", workflow="test")
    run.write_csv("t.csv", [{"a": 1}])
    run.save_tensors("w.safetensors", {"w": torch.ones(2)})
    run.finish({"x": 1.0})
    for name in ("t.csv", "w.safetensors", "results.json", "manifest.json", "report.html"):
        assert _mode(tmp_path / "run" / name) == 0o664, name


def test_saved_probes_follow_the_umask(tmp_path, umask):
    from reprlab.probes.frozen import _atomic

    umask(0o022)
    _atomic(tmp_path / "p.bin", lambda p: p.write_bytes(b"123"))
    assert _mode(tmp_path / "p.bin") == 0o644


def test_every_file_of_a_probe_run_is_group_readable(tmp_path, umask):
    """The reported case: `stat -c %a runs/probe/report.html` said 600."""
    from conftest import save_tiny

    from reprlab.cli import main

    model = save_tiny(tmp_path / "m", hidden=32, layers=2)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"good day {i},pos\nbad day {i},neg\n"
                                             for i in range(30)))
    umask(0o002)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(model), "--data", str(data), "--sites", "layers.*",
                 "--positions", "mean", "--probes", "logistic", "--bootstrap", "0",
                 "--out", str(out), "--no-progress"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".safetensors") for p in files) and (out / "report.html") in files
    # every file the run wrote gets 0o666 less the umask (the capture's lock file is 0o644)
    wrong = {str(p.relative_to(out)): oct(_mode(p)) for p in files
             if _mode(p) != (0o644 if p.name == ".lock" else 0o664)}
    assert wrong == {}


def test_apply_umask_fixes_files_libraries_make_private(tmp_path, umask):
    from safetensors.torch import save_file

    from reprlab.io import apply_umask

    umask(0o022)
    (tmp_path / "d").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "d" / "w.safetensors"))
    assert _mode(tmp_path / "d" / "w.safetensors") == 0o600  # what safetensors does
    apply_umask(tmp_path / "d")
    assert _mode(tmp_path / "d" / "w.safetensors") == 0o644
