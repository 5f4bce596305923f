"""Run directories: a rerun killed part-way never reads as complete (SIGKILL in a subprocess),
for RunDir-based workflows and for `reprlab probe`, whose capture runs before its report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import save_tiny

from reprlab.errors import StoreError
from reprlab.report import RunDir
from reprlab.report.rundir import invalidate, is_complete

ROOT = Path(__file__).resolve().parents[1]


def _finished(out: Path) -> None:
    run = RunDir.create(out, workflow="demo", config={"n": 1})
    run.write_csv("layers.csv", [{"site": "old", "acc": 0.5}])
    run.finish({"acc": 0.5}, summary="old run")
    assert is_complete(out)


def _kill_when_ready(code: str, timeout: float = 240) -> tuple[str, str]:
    """Run ``code`` in a subprocess; when it prints READY, SIGKILL it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        line = proc.stdout.readline()
        while line and "READY" not in line:
            line = proc.stdout.readline()
        assert "READY" in line, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return out, err


def test_is_complete_and_load_results(tmp_path):
    out = tmp_path / "run"
    assert not is_complete(out)
    _finished(out)
    assert RunDir.load_results(out) == {"acc": 0.5}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and "layers.csv" in manifest["files"]
    assert invalidate(out) is True and not is_complete(out)
    assert invalidate(out) is False
    with pytest.raises(StoreError, match="not a finished reprlab run"):
        RunDir.load_results(out)


def test_creating_a_run_removes_the_old_mark_first(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    run = RunDir.create(out, workflow="demo")
    assert not is_complete(out)
    assert (out / "report.html").exists()  # the old files stay readable until replaced
    run.finish({"acc": 0.9})
    assert is_complete(out) and RunDir.load_results(out) == {"acc": 0.9}


def test_a_store_is_never_taken_for_a_run(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"kind": "activation_store", "rows": 3}))
    with pytest.raises(StoreError, match="holds a activation store, not a run directory"):
        RunDir.create(out, workflow="demo")
    assert (out / "manifest.json").exists()


def test_sigkill_mid_rerun_leaves_it_incomplete(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    _kill_when_ready(f"""
        import time
        from reprlab.report import RunDir
        run = RunDir.create({str(out)!r}, workflow="demo")
        run.write_csv("layers.csv", [{{"site": "new", "acc": 0.9}}])
        print("READY", flush=True)
        time.sleep(120)
        run.finish({{"acc": 0.9}})
    """)
    assert "new" in (out / "layers.csv").read_text()  # half-written: new table...
    assert not (out / "manifest.json").exists()  # ...and no completion mark beside it
    assert not is_complete(out)
    with pytest.raises(StoreError):
        RunDir.load_results(out)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-rundir"), hidden=32, layers=2)


def _data(path: Path, n: int = 60) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(n // 2):
            w.writerow([f"What a good day {i} it was.", "positive"])
            w.writerow([f"What a bad day {i} it was.", "negative"])
    return path


_STOP_IN_SWEEP = """
import reprlab.probes.run as target
def stop(*a, **k):
    print("READY", flush=True)
    time.sleep(120)
target.sweep = stop
"""

def test_probe_rerun_killed_part_way_is_not_complete(tiny_dir, tmp_path):
    from reprlab.cli import main

    data = _data(tmp_path / "d.csv")
    out = tmp_path / "probe"
    args = ["probe", "--model", str(tiny_dir), "--data", str(data), "--sites", "layers.*",
            "--positions", "mean", "--probes", "logistic", "--bootstrap", "0", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0 and is_complete(out)
    first = json.loads((out / "results.json").read_text())
    # a rerun stopped by SIGKILL while probes are fitted, before its report is started (the
    # kill after new report files is test_sigkill_mid_rerun_leaves_it_incomplete)
    _kill_when_ready("import time\n" + _STOP_IN_SWEEP + textwrap.dedent(f"""
        from reprlab.cli import main
        main({[*args[:-3], "--seed", "1", *args[-3:]]!r})
    """))
    assert (out / "stores").is_dir() and (out / "layers.csv").exists()
    assert not is_complete(out)
    with pytest.raises(StoreError):
        RunDir.load_results(out)
    assert main(args) == 0 and is_complete(out)  # the same command finishes it again
    again = json.loads((out / "results.json").read_text())
    assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in first["rows"]]
