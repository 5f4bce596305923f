"""Sweep engine on a toy objective subcommand (in-process): TPE finds the optimum region,
pruning stops bad trials early (their steps counted), metrics from the metrics log, status
and report, trackers and secrets, SLURM job parameters."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from report_dom import assert_shows

import reprlab.cli as cli
from reprlab.cliutil import opt, subcommand
from reprlab.report.fmt import num
from reprlab.sweeps import progress
from reprlab.sweeps.study import info

optuna = pytest.importorskip("optuna")


@dataclass
class ToyObjective:
    """A toy objective: value = -(x - 0.7)^2 - (y - 2)^2 / 10 after ``steps`` steps; each step
    reports a partial value that rises to the final one."""

    x: float = opt(0.0, help="x")
    y: int = opt(0, help="y")
    kind: str = opt("a", help="a or b")
    steps: int = opt(5, help="steps")
    log_only: float = opt(0.0, help="write train_log.jsonl (sleeping this long per step) "
                          "instead of calling progress.report")
    out: str = opt("runs/toy", help="run directory")


def _toy_value(cfg: ToyObjective) -> float:
    return -((cfg.x - 0.7) ** 2) - (cfg.y - 2) ** 2 / 10 - (0.2 if cfg.kind == "b" else 0.0)


def _run_toy(cfg: ToyObjective) -> int:
    from reprlab.report import RunDir

    run = RunDir.create(cfg.out, "toy-objective", config=cfg)
    final = _toy_value(cfg)
    for step in range(cfg.steps):
        score = final - (cfg.steps - 1 - step) * 0.01
        if cfg.log_only:
            with open(Path(cfg.out) / "train_log.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "score": score}) + "\n")
            time.sleep(cfg.log_only)
        else:
            progress.report(step, score=score, loss=-final)
    run.finish({"score": final, "nested": {"value": final}})
    return 0


@pytest.fixture
def toy_cli(monkeypatch):
    original = cli.build_parser

    def build(command=None):
        parser = original("sweep" if command == "toyobj" else command)
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        if "toyobj" not in sub.choices:
            subcommand(sub, "toyobj", ToyObjective, _run_toy, help="toy objective")
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    monkeypatch.setitem(cli.COMMANDS, "toyobj", "reprlab.sweeps.cli")
    return build


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


def _trials(sweep: Path) -> list:
    from reprlab.sweeps.report import load

    return load(sweep)[3].get_trials()


def _grid_study(tmp_path: Path, values: str, storage: str | None = None):
    """A grid sweep over ``x`` (``values``: a YAML list) made ready by hand, grid queued:
    (spec path, spec, sweep directory, study)."""
    from reprlab.sweeps.run import resolve
    from reprlab.sweeps.study import enqueue_grid, init_sweep_dir, open_study

    spec_path = _write(tmp_path, f"""
command: toyobj --steps 1
method: grid
metric: {{name: score, goal: maximize}}
parameters:
  x: {{values: {values}}}
""")
    spec, out = resolve(spec_path, out=tmp_path / "sweep")
    study = open_study(out, init_sweep_dir(out, spec, storage))
    enqueue_grid(study, spec)
    return spec_path, spec, out, study


def test_tpe_finds_the_optimum_region(tmp_path, toy_cli):
    spec = _write(tmp_path, """
command: toyobj --steps 2
method: tpe
metric: {name: nested.value, goal: maximize}
parameters:
  x: {distribution: uniform, min: -2.0, max: 3.0}
  y: {distribution: int_uniform, min: 0, max: 6}
trials: 24
seed: 3
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                     "--no-report"]) == 0
    trials = [t for t in _trials(out) if t.state.name == "COMPLETE"]
    assert len(trials) == 24
    best = max(trials, key=lambda t: t.value)
    assert abs(best.params["x"] - 0.7) < 0.3 and abs(best.params["y"] - 2) <= 1
    assert best.value > -0.15  # the space spans values down to about -10
    # the later (model-guided) half beats the random start-up half on average
    first, second = trials[:8], trials[-8:]
    assert sum(t.value for t in second) / 8 > sum(t.value for t in first) / 8
    # each value is what that trial's run directory recorded
    for t in trials:
        res = json.loads((Path(info(t)["run_dir"]) / "results.json").read_text())
        assert res["nested"]["value"] == pytest.approx(t.value)
        man = json.loads((Path(info(t)["run_dir"]) / "manifest.json").read_text())
        assert f"--x={t.params['x']!r}" in man["command_line"]


def test_median_pruning_stops_bad_trials_early(tmp_path, toy_cli):
    spec = _write(tmp_path, """
command: toyobj --steps 8
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.6, 0.8, 0.7, -1.5, -2.0]}
early_terminate: {type: median, warmup: 1, min_trials: 2}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                     "--no-report"]) == 0
    by_x = {t.params["x"]: t for t in _trials(out)}
    for x in (0.7, 0.6, 0.8):
        assert by_x[x].state.name == "COMPLETE" and info(by_x[x])["steps"] == 8
    for x in (-1.5, -2.0):
        t = by_x[x]
        assert t.state.name == "PRUNED"
        steps = info(t)["steps"]
        assert 2 <= steps <= 3  # warmup 1: the first check is at step 1
        lines = (Path(info(t)["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == steps
        assert not (Path(info(t)["run_dir"]) / "manifest.json").exists()


def test_pruning_from_a_workflows_own_step_log(tmp_path, toy_cli):
    # like `prefs train`, which writes train_log.jsonl and does not call progress.report
    spec = _write(tmp_path, """
command: toyobj --steps 12 --log-only 0.1
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.6, 0.8, 0.7, -2.0]}
early_terminate: {type: median, warmup: 1, min_trials: 2}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                     "--no-report"]) == 0
    by_x = {t.params["x"]: t for t in _trials(out)}
    assert [by_x[x].state.name for x in (0.6, 0.8, 0.7)] == ["COMPLETE"] * 3
    bad = by_x[-2.0]
    assert bad.state.name == "PRUNED"
    written = (Path(info(bad)["run_dir"]) / "train_log.jsonl").read_text().splitlines()
    assert 2 <= len(written) <= 6  # stopped a few polls after step 1, long before 12
    assert not (Path(info(bad)["run_dir"]) / "manifest.json").exists()


def test_hyperband_and_metric_from_metrics_log(tmp_path, toy_cli):
    spec = _write(tmp_path, """
command: toyobj --steps 3
method: random
metric: {name: loss, goal: minimize}
parameters:
  x: {values: [0.0, 0.7]}
  kind: {values: [a, b]}
early_terminate: {type: hyperband, min_iter: 1, max_iter: 3, eta: 3}
trials: 4
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                     "--no-report"]) == 0
    done = [t for t in _trials(out) if t.state.name == "COMPLETE"]
    assert done
    for t in done:  # "loss" is not in results.json: the last logged value is the objective
        cfg = ToyObjective(x=t.params["x"], kind=t.params["kind"])
        assert t.value == pytest.approx(-_toy_value(cfg))


def test_status_report_and_resume_a_finished_sweep(tmp_path, toy_cli, capsys):
    spec = _write(tmp_path, """
command: toyobj --steps 1
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.0, 0.5, 0.7, 1.0]}
  kind: {values: [a, b]}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["sweep", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 of 8 trials finished (8 complete)" in text
    assert "best: trial" in text and "x=0.7" in text and "kind=a" in text
    assert "--x=0.7 --kind=a" in text
    res = json.loads((out / "results.json").read_text())
    imp = res["importances"]
    assert set(imp) == {"x", "kind"} and imp["x"] > imp["kind"]  # x moves the value more
    assert res["importance_evaluator"] == "PED-ANOVA"
    html = (out / "report.html").read_text()
    assert "PED-ANOVA" in html and "Parallel coordinates" in html
    # the page speaks in words and formatted numbers, without the machine's paths
    best = res["status"]["best"]
    page = assert_shows(out / "report.html", "Sweep: maximize score",
                        "Grid search to maximize score: 8 of 8 trials finished (8 complete). "
                        f"Best: trial {best['trial']}, score = {num(best['value'], 4)} at "
                        "x = 0.7, kind = a.", "(in the sweep folder)")
    assert "Sweep sweep" not in page and str(tmp_path) not in page
    assert not re.search(r"\d\.\d{7,}", page)
    for png in ("history.png", "parallel.png", "importances.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 9
    # running the same sweep again (by its directory) runs nothing new
    before = {t.number for t in _trials(out)}
    assert cli.main(["sweep", str(out), "--workers", "1", "--no-progress", "--no-report"]) == 0
    assert {t.number for t in _trials(out)} == before


def test_metric_no_trial_reports_stops_after_one_trial(tmp_path, toy_cli, capsys):
    spec = _write(tmp_path, """
command: toyobj --steps 1
method: grid
metric: {name: scroe, goal: maximize}
parameters:
  x: {values: [0.0, 0.5, 0.7]}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metric 'scroe'" in err[0] and "score" in err[0]
    assert len([t for t in _trials(out) if t.state.name != "WAITING"]) == 1


def test_secrets_never_written(tmp_path, toy_cli, monkeypatch):
    secret = "sk-test-5a7e9c1d0b3f"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    spec = _write(tmp_path, """
command: toyobj --steps 2
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.1, 0.2]}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                     "--no-progress"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_slurm_job_parameters_and_missing_sbatch(tmp_path, toy_cli, capsys, monkeypatch):
    from reprlab.sweeps.executors import ExecOptions, slurm_parameters

    opts = ExecOptions(workers=8, partition="gpu", time_min=90, gpus=1, cpus=4, mem_gb=32,
                       account="lab", slurm_extra={"constraint": "a100"})
    p = slurm_parameters(opts, n_jobs=32, name="reprlab-sweep")
    assert p == {"name": "reprlab-sweep", "timeout_min": 90, "cpus_per_task": 4,
                 "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": 8,
                 "gpus_per_node": 1, "mem_gb": 32, "slurm_partition": "gpu",
                 "slurm_account": "lab", "slurm_additional_parameters": {"constraint": "a100"}}
    # the SLURM path is submitit's AutoExecutor: these parameters become this sbatch script
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="slurm")
    ex.update_parameters(**p)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=4",
                 "--mem=32GB", "--account=lab", "--constraint=a100", "--job-name=reprlab-sweep",
                 "--signal=USR2@90", "--open-mode=append"):
        assert f"#SBATCH {line}" in text, line
    # without sbatch: one line, and no trial started
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = _write(tmp_path, """
command: toyobj
method: grid
metric: score
parameters: {x: {values: [1.0, 2.0]}}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --executor slurm needs SLURM's sbatch on PATH; run on a cluster login "
                   "node, or use --executor local or submitit-local"]
    assert not out.exists()


@pytest.mark.parametrize("cluster", ["submitit-debug"])
def test_submitit_debug_runs_trials_through_jobs(tmp_path, toy_cli, cluster):
    spec = _write(tmp_path, """
command: toyobj --steps 1
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.1, 0.7]}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--executor", cluster,
                     "--workers", "2", "--no-progress", "--no-report"]) == 0
    trials = _trials(out)
    assert sorted(t.params["x"] for t in trials if t.state.name == "COMPLETE") == [0.1, 0.7]
    assert math.isclose(max(t.value for t in trials), -0.4, abs_tol=1e-12)  # x=0.7, y=0


@pytest.mark.slow
def test_wandb_offline_and_mlflow_sqlite_trackers(tmp_path, toy_cli, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    secret = "wk-test-0f1e2d3c4b5a"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    spec = _write(tmp_path, """
command: toyobj --steps 3
method: grid
metric: {name: score, goal: maximize}
parameters:
  x: {values: [0.2, 0.7]}
""")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                     "--no-report", "--track", "wandb,mlflow"]) == 0
    # MLflow: one run per trial in the sweep's sqlite store, with params, steps and the value
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sorted(r.data.params["x"] for r in runs) == ["0.2", "0.7"]
    client = mlflow.tracking.MlflowClient()
    for r in runs:
        assert r.info.status == "FINISHED"
        hist = client.get_metric_history(r.info.run_id, "score")
        assert [m.step for m in hist if m.step > 0] == [1, 2]  # per step, then the final value
    # W&B offline: one run directory per trial, inside that trial's run directory
    for t in _trials(out):
        assert list((Path(info(t)["run_dir"]) / "wandb").glob("offline-run-*"))
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_two_sweep_dirs_share_one_study_through_storage(tmp_path, toy_cli):
    spec = _write(tmp_path, """
command: toyobj --steps 1
method: random
metric: {name: score, goal: maximize}
parameters:
  x: {distribution: uniform, min: 0.0, max: 1.0}
trials: 3
""")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    assert cli.main(["sweep", str(spec), "--out", str(a), "--storage", url, "--workers", "1",
                     "--no-progress", "--no-report"]) == 0
    # the second machine joins the same study: with trials raised to 5 it runs the 2 missing
    assert cli.main(["sweep", str(spec), "--out", str(b), "--storage", url, "--workers", "1",
                     "--no-progress", "--no-report", "--trials", "5"]) == 0
    trials = _trials(b)
    assert len(trials) == 5 and len(list(a.glob("trials/*/manifest.json"))) == 3
    assert len(list(b.glob("trials/*/manifest.json"))) == 2
    assert not (a / "study.db").exists() and not (b / "study.db").exists()


def test_preempted_submitit_job_requeues_its_trial(tmp_path, toy_cli, monkeypatch):
    from reprlab.sweeps.executors import TrialJob
    from reprlab.sweeps.study import claim
    from reprlab.sweeps.worker import work

    monkeypatch.chdir(tmp_path)  # the job changes to the sweep's working directory
    _, spec, out, study = _grid_study(tmp_path, "[0.1, 0.7]")
    cut = claim(study, spec, out)  # a job took this trial, then SLURM preempted it
    (out / "trials" / f"{cut.number:04d}").mkdir(parents=True)
    job = TrialJob(str(out), ("jsonl",), {}, str(tmp_path))
    job.trial_number = cut.number
    again = job.checkpoint().function  # what submitit resubmits
    assert isinstance(again, TrialJob) and again.requeue == cut.number
    assert again() == 1  # puts the cut-off trial back, then runs one trial
    work(out)
    trials = _trials(out)
    stale = [t for t in trials if t.user_attrs.get("stale")]
    assert [t.number for t in stale] == [cut.number]
    assert not (out / "trials" / f"{cut.number:04d}").exists()
    done = sorted(t.params["x"] for t in trials if t.state.name == "COMPLETE")
    assert done == [0.1, 0.7]


def test_worker_killed_between_asking_and_recording_itself(tmp_path, toy_cli):
    """A worker that died right after the study handed it a trial, before it wrote its host
    and pid on it, leaves a RUNNING trial no one owns: resuming runs that point again."""
    spec_path, _, out, study = _grid_study(tmp_path, "[0.1, 0.4, 0.7]")
    orphan = study.ask()  # what claim() does first; the worker died before recording itself
    assert orphan.params == {} and "worker" not in orphan.user_attrs
    assert cli.main(["sweep", str(spec_path), "--out", str(out), "--workers", "1",
                     "--no-progress", "--no-report"]) == 0
    trials = _trials(out)
    done = sorted(t.params["x"] for t in trials if t.state.name == "COMPLETE")
    assert done == [0.1, 0.4, 0.7]
    assert [t.number for t in trials if t.user_attrs.get("stale")] == [orphan.number]
    assert not any(t.state.name == "RUNNING" for t in trials)


def test_unrecorded_trial_of_a_shared_study_is_left_to_its_worker_for_a_while(
        tmp_path, toy_cli, monkeypatch):
    """With ``--storage`` other directories' workers claim under their own locks: a trial just
    asked for there and not yet recorded is not taken for a cut-off one until it is old."""
    from reprlab.sweeps import study as S

    _, _, out, study = _grid_study(tmp_path, "[0.1, 0.7]", f"sqlite:///{tmp_path / 'shared.db'}")
    fresh = study.ask()
    assert S.requeue_stale(study, out) == 0
    assert study.get_trials()[fresh.number].state.name == "RUNNING"
    monkeypatch.setattr(S, "ORPHAN_AFTER_S", 0.0)
    assert S.requeue_stale(study, out) == 1
    assert study.get_trials()[fresh.number].user_attrs.get("stale") is True
