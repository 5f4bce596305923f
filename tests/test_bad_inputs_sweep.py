"""Sweeps refuse what their command refuses, before any trial runs, and a sweep whose trials
failed does not read as complete (exit code, one line, the directory afterwards)."""

from __future__ import annotations

import pytest
from test_bad_inputs_runs import one_line

from reprlab.cli import main
from reprlab.io import read_json

pytest.importorskip("optuna")

HEAD = ("command: prefs train --model {model} --limit 8 --steps 1 --batch-size 2 "
        "--ref-cache off --no-progress\nmetric: {{name: final.loss, goal: minimize}}\n")


@pytest.mark.parametrize("name,params,expected", [
    ("unknown method among values", "method: grid\nparameters: {method: {values: [dpo, notamethod]}}",
     "unknown --method 'notamethod'"),
    ("NaN grid value", "method: grid\nparameters: {lr: {values: [0.001, .nan]}}",
     "--lr must be a finite number"),
    ("infinite grid value", "method: grid\nparameters: {beta: {values: [.inf]}}",
     "--beta must be a finite number"),
    ("categorical value of a random search",
     "method: random\ntrials: 3\nparameters: {method: {values: [dpo, ipo, nosuch]}}",
     "unknown --method 'nosuch'"),
])
def test_sweep_checks_every_value_before_running(toy_mini, tmp_path, capsys, name, params,
                                                  expected):
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD.format(model=toy_mini.sft) + params + "\n")
    out = tmp_path / "sweep"
    line = one_line(capsys, ["sweep", str(spec), "--out", str(out), "--no-progress"], expected)
    assert "is invalid" in line
    assert not out.exists()  # nothing ran, nothing was written


def test_a_sweep_with_failed_trials_is_not_complete(toy_mini, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD.format(model=toy_mini.sft) + "method: grid\nparameters: {data: "
                    f"{{values: [builtin:toy-prefs, {tmp_path / 'missing.jsonl'}]}}}}\n")
    out = tmp_path / "sweep"
    one_line(capsys, ["sweep", str(spec), "--out", str(out), "--no-progress", "--workers", "1"],
             "1 of 2 finished trials failed (the sweep is not complete)")
    manifest = read_json(out / "manifest.json")
    assert manifest["complete"] is False and manifest["trials_failed"] == 1
    assert (out / "report.html").exists()
    assert main(["sweep", "status", str(out)]) == 0
