"""Sweep files and options: every bad input is one clear line, exit 2, and no trial started;
parameters become the command's options; W&B-shaped files parse."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from reprlab.cli import main
from reprlab.errors import ConfigError
from reprlab.sweeps.spec import parse_spec

pytest.importorskip("optuna")

PROBE = "command: probe --model minilm --data builtin:cities --positions mean\n"
METRIC = "metric: {name: best.val_acc, goal: maximize}\n"
GRID = "method: grid\n"

BAD = [
    ("not yaml", "command: [probe\nmethod: grid\n", [], "is not valid YAML at line"),
    ("unknown key", PROBE + METRIC + "metirc: x\nparameters: {l2: {values: [1]}}\n", [],
     "unknown key 'metirc'"),
    ("no command", METRIC + "parameters: {l2: {values: [1]}}\n", [], "give `command:`"),
    ("not a subcommand", "command: frobnicate --x 1\n" + METRIC + GRID +
     "parameters: {l2: {values: [1]}}\n", [], "does not start with a reprlab subcommand"),
    ("unknown parameter", PROBE + METRIC + GRID + "parameters: {l22: {values: [1, 2]}}\n", [],
     "parameter 'l22' is not an option of `reprlab probe` (did you mean l2?)"),
    ("metric without name", PROBE + "metric: {goal: maximize}\n" + GRID +
     "parameters: {l2: {values: [1]}}\n", [], "give `metric: {name:"),
    ("bad goal", PROBE + "metric: {name: a, goal: up}\n" + GRID +
     "parameters: {l2: {values: [1]}}\n", [], "goal must be maximize or minimize"),
    ("empty search space", PROBE + METRIC + GRID + "parameters: {l2: {value: 1}}\n", [],
     "the search space is empty"),
    ("no parameters", PROBE + METRIC + GRID, [], "the search space is empty"),
    ("grid bigger than trials", PROBE + METRIC + GRID +
     "parameters: {l2: {values: [0.1, 1, 10]}}\ntrials: 2\n", [],
     "the grid has 3 combinations but trials is 2; raise trials to 3 or drop it"),
    ("grid bigger than --trials", PROBE + METRIC + GRID +
     "parameters: {l2: {values: [0.1, 1, 10]}}\n", ["--trials", "2"],
     "the grid has 3 combinations but trials is 2"),
    ("grid with a distribution", PROBE + METRIC + GRID +
     "parameters: {l2: {distribution: uniform, min: 0.1, max: 1}}\n", [],
     "method grid needs `values: [...]`"),
    ("log with min 0", PROBE + METRIC + "method: tpe\ntrials: 4\n"
     "parameters: {l2: {distribution: log_uniform, min: 0, max: 1}}\n", [], "needs min > 0"),
    ("min above max", PROBE + METRIC + "method: random\ntrials: 4\n"
     "parameters: {l2: {min: 1.0, max: 0.5}}\n", [], "min must be below max"),
    ("unknown distribution", PROBE + METRIC + "method: random\ntrials: 4\n"
     "parameters: {l2: {distribution: normal, min: 0, max: 1}}\n", [],
     "unknown distribution 'normal'"),
    ("unknown method", PROBE + METRIC + "method: hyperopt\nparameters: {l2: {values: [1]}}\n",
     [], "unknown method 'hyperopt'"),
    ("random without trials", PROBE + METRIC + "method: random\n"
     "parameters: {l2: {values: [1, 2]}}\n", [], "needs `trials: N`"),
    ("unknown pruner", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n"
     "early_terminate: {type: asha}\n", [], "early_terminate needs `type: median`"),
    ("out in command", "command: probe --out x\n" + METRIC + GRID +
     "parameters: {l2: {values: [1]}}\n", [], "leave --out out of the sweep's command"),
    ("value the command refuses", PROBE + METRIC + GRID + "parameters: {l2: {values: [1, -1]}}\n",
     [], "--l2=-1 --out="),
    ("value of the wrong type", PROBE + METRIC + GRID +
     "parameters: {mlp_width: {values: [8, wide]}}\n", [], "--mlp-width needs a int, got 'wide'"),
    ("unreachable ray", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
     ["--executor", "ray", "--address", "127.0.0.1:9"],
     "cannot reach a Ray cluster at 127.0.0.1:9" if importlib.util.find_spec("ray")
     else "--executor ray needs Ray Tune"),  # ray is an optional extra
    ("unknown executor", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
     ["--executor", "k8s"], "unknown --executor 'k8s'"),
    ("unknown tracker", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
     ["--track", "neptune"], "unknown tracker 'neptune'"),
]
if importlib.util.find_spec("wandb") is None:
    BAD.append(("wandb missing", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
                ["--track", "wandb"], "--track wandb needs the wandb package"))
if importlib.util.find_spec("mlflow") is None:
    BAD.append(("mlflow missing", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
                ["--track", "mlflow"], "--track mlflow needs the mlflow package"))
if importlib.util.find_spec("ray") is None:
    BAD.append(("ray missing", PROBE + METRIC + GRID + "parameters: {l2: {values: [1]}}\n",
                ["--executor", "ray"], "--executor ray needs Ray Tune"))


@pytest.mark.parametrize("text,extra,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, capsys, text, extra, message):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not out.exists()  # no sweep directory, no trial


def test_status_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["sweep", "status", str(tmp_path)]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err
    assert main(["sweep", "status"]) == 2
    assert "give the sweep directory" in capsys.readouterr().err


def test_wandb_shaped_file_and_parameter_flags():
    from reprlab.sweeps.commands import subcommand_parser, trial_argv

    spec = parse_spec({
        "program": "train.py", "method": "bayes", "name": "s",
        "command": ["${env}", "reprlab", "probe", "--model", "minilm", "${args}"],
        "metric": {"name": "best.val_acc", "goal": "maximize"},
        "parameters": {"l2": {"distribution": "log_uniform_values", "min": "1e-5", "max": 1e-1},
                       "mlp_width": {"min": 8, "max": 64},
                       "no_controls": {"values": [True, False]},
                       "probes": {"values": [["logistic", "mlp"], "mass-mean"]},
                       "bootstrap": {"value": 0}},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        "run_cap": 12,
    })
    assert spec.method == "tpe" and spec.trials == 12 and spec.command == ("probe", "--model",
                                                                             "minilm")
    kinds = {p.name: (p.kind, p.log, p.low, p.high) for p in spec.params}
    assert kinds["l2"] == ("float", True, 1e-5, 0.1)
    assert kinds["mlp_width"] == ("int", False, 8.0, 64.0)
    assert spec.pruning.type == "hyperband" and spec.pruning.min_iter == 2
    parser, _ = subcommand_parser(spec.command)
    argv = trial_argv(spec, parser, {"l2": 0.001, "mlp_width": 16, "no_controls": True,
                                     "probes": "logistic,mlp"}, "runs/t")
    assert argv == ["probe", "--model", "minilm", "--bootstrap=0", "--l2=0.001",
                    "--mlp-width=16", "--no-controls", "--probes=logistic,mlp", "--out=runs/t"]
    argv = trial_argv(spec, parser, {"l2": 0.1, "mlp_width": 8, "no_controls": False,
                                     "probes": "mass-mean"}, "runs/t")
    assert "--no-controls" not in argv


def test_grid_is_every_combination_in_order():
    spec = parse_spec({"command": "probe", "method": "grid", "metric": "m",
                       "parameters": {"a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]},
                                      "c": {"value": 5}}})
    assert spec.trials == 6
    assert spec.grid() == [{"a": a, "b": b} for a in (1, 2, 3) for b in ("x", "y")]
    with pytest.raises(ConfigError, match="whole number"):
        parse_spec({"command": "probe", "method": "random", "metric": "m", "trials": 2.5,
                    "parameters": {"a": {"values": [1, 2]}}})


def test_shared_stores_lock_and_ready_marker(tmp_path):
    from reprlab.sweeps.share import READY, shared_stores

    sweep = tmp_path / "sweep"
    runs = [tmp_path / f"t{i}" for i in range(4)]
    for r in runs:
        r.mkdir()
    with shared_stores(runs[0], sweep, "k1") as info:  # fails before building: not ready
        assert info["capture"] == "built"
    assert not (sweep / "stores" / "k1" / READY).exists()
    with shared_stores(runs[1], sweep, "k1") as info:  # builds a store, succeeds
        (runs[1] / "stores" / "train").mkdir()
        (runs[1] / "stores" / "train" / "manifest.json").write_text("{}")
        info["ok"] = True
    assert info["capture"] == "built" and (sweep / "stores" / "k1" / READY).exists()
    with shared_stores(runs[2], sweep, "k1") as info:
        assert info["capture"] == "reused"
        assert (runs[2] / "stores" / "train" / "manifest.json").exists()  # the shared folder
    with shared_stores(runs[3], sweep, "k2") as info:  # nothing to capture (e.g. --store)
        info["ok"] = True
    assert info["capture"] == "none" and (sweep / "stores" / "k2" / READY).exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "examples")
                                        .glob("sweep*.yaml")), ids=lambda p: p.name)
def test_example_sweep_files_pass_the_pre_run_check(path, tmp_path):
    from reprlab.sweeps.run import check, resolve

    spec, _ = resolve(path, out=tmp_path / "out")
    check(spec, tmp_path / "out")
    assert spec.trials >= 1 and spec.searched
    assert not (tmp_path / "out").exists()


def test_choosing_on_a_test_metric_is_warned(caplog):
    raw = {"command": "probe", "method": "grid", "parameters": {"l2": {"values": [1, 2]}}}
    with caplog.at_level("WARNING", logger="reprlab.sweeps.spec"):
        parse_spec({**raw, "metric": "best.val_acc"})
    assert not caplog.records
    with caplog.at_level("WARNING", logger="reprlab.sweeps.spec"):
        parse_spec({**raw, "metric": {"name": "best.test_acc"}})
    assert len(caplog.records) == 1 and "choose on a validation metric" in caplog.text
