"""Sweeps over real `reprlab probe` runs on a tiny saved model: a grid equals the grid run by
hand, trials share one store build, a killed sweep resumes without redoing finished trials,
parallel workers, submitit's local executor and Ray."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_tiny

from reprlab.cli import main
from reprlab.sweeps.study import info

pytest.importorskip("optuna")

FIXED = "--bootstrap 0 --no-controls --no-progress --positions mean --max-length 32"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-inputs")
    model = save_tiny(d / "tiny", "gpt2", hidden=16, layers=2)
    rng = random.Random(0)
    rows = []
    for i in range(40):
        lab = i % 2
        word = rng.choice(["red", "blue", "green"] if lab else ["cat", "dog", "cow"])
        rows.append({"text": f"the {word} thing number {i}", "label": "a" if lab else "b"})
    with open(d / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return model, d / "data.csv"


def _spec(tmp_path: Path, inputs, params: str, method: str = "grid", extra: str = "") -> Path:
    model, data = inputs
    p = tmp_path / "sweep.yaml"
    p.write_text(f"command: probe --model {model} --data {data} {FIXED}\n"
                 f"method: {method}\nmetric: {{name: best.val_acc, goal: maximize}}\n"
                 f"parameters:\n{params}{extra}")
    return p


def _study(out: Path):
    from reprlab.sweeps.report import load

    return load(out)[3]


def test_grid_equals_the_grid_by_hand_and_shares_one_capture(tmp_path, inputs, monkeypatch):
    import reprlab.capture as capture_mod

    forwards = []
    real = capture_mod._run_chunk
    monkeypatch.setattr(capture_mod, "_run_chunk",
                        lambda *a, **k: forwards.append(1) or real(*a, **k))
    spec = _spec(tmp_path, inputs, "  l2: {values: [0.0001, 30.0]}\n"
                                   "  probes: {values: [logistic, mass-mean]}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert len(forwards) == 1  # one capture (one chunk) for all four trials
    trials = [t for t in _study(out).get_trials() if t.state.name == "COMPLETE"]
    combos = sorted((t.params["l2"], t.params["probes"]) for t in trials)
    assert combos == sorted((a, b) for a in (0.0001, 30.0) for b in ("logistic", "mass-mean"))
    assert [info(t)["capture"] for t in sorted(trials, key=lambda t: t.number)] == \
        ["built"] + ["reused"] * 3
    assert len([p for p in (out / "stores").iterdir() if p.is_dir()]) == 1

    # the same grid by hand: every value equal, the best the same
    model, data = inputs
    by_hand = {}
    for t in trials:
        run = tmp_path / f"hand-{t.number}"
        argv = ["probe", "--model", str(model), "--data", str(data), *FIXED.split(),
                f"--l2={t.params['l2']!r}", f"--probes={t.params['probes']}", "--out", str(run)]
        assert main(argv) == 0
        by_hand[t.number] = json.loads((run / "results.json").read_text())["best"]["val_acc"]
        recorded = json.loads((Path(info(t)["run_dir"]) / "results.json").read_text())
        assert t.value == recorded["best"]["val_acc"] == pytest.approx(by_hand[t.number])
    values = {round(v, 6) for v in by_hand.values()}
    assert len(values) > 1  # the option matters on this data
    status = json.loads((out / "results.json").read_text())["status"]
    assert status["best"]["value"] == pytest.approx(max(by_hand.values()))
    best = max(trials, key=lambda t: t.value)
    assert status["best"]["trial"] == best.number


def test_killed_sweep_resumes_without_redoing_finished_trials(tmp_path, inputs):
    spec = _spec(tmp_path, inputs, "  l2: {values: [0.0001, 0.01, 1.0, 100.0]}\n")
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "reprlab.cli", "sweep", str(spec), "--out", str(out),
           "--workers", "1", "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("trials/*/manifest.json"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trials/*/manifest.json")}
    assert 2 <= len(finished) < 4
    assert main(["sweep", "status", str(out)]) == 0

    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                 "--no-report"]) == 0
    trials = _study(out).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["l2"] for t in done) == [0.0001, 0.01, 1.0, 100.0]
    for name, mtime in finished.items():  # finished trials were not run again
        assert (out / "trials" / name / "manifest.json").stat().st_mtime_ns == mtime
    stale = [t for t in trials if t.user_attrs.get("stale")]
    assert len(stale) <= 1 and len(trials) == 4 + len(stale)
    for t in stale:  # the cut-off trial's half-written directory is gone
        assert not (out / "trials" / f"{t.number:04d}").exists()


@pytest.mark.slow
def test_two_local_workers_share_one_store_build(tmp_path, inputs):
    spec = _spec(tmp_path, inputs, "  l2: {values: [0.001, 0.1, 10.0, 1000.0]}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "2", "--no-progress",
                 "--no-report"]) == 0
    trials = [t for t in _study(out).get_trials() if t.state.name == "COMPLETE"]
    assert len(trials) == 4
    assert sorted(info(t)["capture"] for t in trials) == ["built"] + ["reused"] * 3
    assert len({info(t)["pid"] for t in trials}) == 2  # both workers ran trials
    stores = [p for p in (out / "stores").iterdir() if p.is_dir()]
    assert len(stores) == 1
    built = (stores[0] / "train-data" / "manifest.json").stat().st_mtime
    for t in trials:
        if info(t)["capture"] == "reused":
            assert t.datetime_start.timestamp() >= built - 1 or info(t)["seconds"] > 0


@pytest.mark.slow
def test_submitit_local_runs_a_two_trial_sweep(tmp_path, inputs):
    spec = _spec(tmp_path, inputs, "  l2: {values: [0.001, 10.0]}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "submitit-local",
                 "--workers", "2", "--no-progress"]) == 0
    trials = [t for t in _study(out).get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.params["l2"] for t in trials) == [0.001, 10.0]
    assert len({info(t)["pid"] for t in trials}) == 2  # one job process per trial
    assert all(info(t)["pid"] != os.getpid() for t in trials)


@pytest.mark.slow
def test_ray_tune_runs_a_two_trial_sweep(tmp_path, inputs, monkeypatch):
    pytest.importorskip("ray.tune")
    import shutil
    import tempfile

    short = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")  # Ray's socket paths are short
    monkeypatch.setenv("RAY_TMPDIR", short)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    spec = _spec(tmp_path, inputs, "  l2: {values: [0.001, 10.0]}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "ray", "--workers", "2",
                 "--no-progress"]) == 0
    trials = [t for t in _study(out).get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.params["l2"] for t in trials) == [0.001, 10.0]
    assert all(info(t)["pid"] != os.getpid() for t in trials)
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
def test_prefs_train_trials_are_pruned_from_their_train_log(tmp_path, inputs):
    pytest.importorskip("peft")
    model, _ = inputs
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: what colour is the sky?",
                                        "chosen": " blue", "rejected": " green"}) + "\n"
                            for i in range(16)))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"command: prefs train --model {model} --data {data} --method dpo --steps 40 "
                    "--raw-text --no-progress --lora-targets all-linear\nmethod: grid\n"
                    "metric: {name: final.loss, goal: minimize}\n"
                    "parameters:\n  lr: {values: [0.003, 0.0000001, 0.00000001]}\n"
                    "early_terminate: {type: median, warmup: 3, min_trials: 1, metric: loss}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                 "--no-report"]) == 0
    trials = sorted(_study(out).get_trials(), key=lambda t: t.number)
    assert trials[0].state.name == "COMPLETE"
    assert len((out / "trials" / "0000" / "train_log.jsonl").read_text().splitlines()) == 40
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned  # a learning rate too small to move the loss falls behind the median
    for t in pruned:
        lines = (Path(info(t)["run_dir"]) / "train_log.jsonl").read_text().splitlines()
        assert 3 <= len(lines) < 40
