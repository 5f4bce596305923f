"""Experiment trackers for sweeps: the local JSONL log (default, no account, no network),
W&B and MLflow (optional installs). Each hangs off :func:`reprlab.sweeps.progress.report`
through ``log(step, metrics)`` and sees a trial ``start`` and ``finish``.

API keys are read by the tracker libraries from the environment only; nothing here writes
them (the trial parameters and metrics are the only things logged).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps.spec import SweepSpec


class JsonlTracker:
    """One line per finished trial in ``<sweep>/trials.jsonl``; the per-step lines go to each
    trial's own ``metrics.jsonl`` (always written)."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec, study_name: str, options: dict):
        self.path = sweep_dir / "trials.jsonl"
        self.current: dict[str, Any] = {}

    def start(self, number: int, params: dict, run_dir: Path) -> None:
        self.current = {"trial": number, "params": params, "run_dir": str(run_dir),
                        "started": round(time.time(), 3)}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def finish(self, state: str, value: float | None, metric: str) -> None:
        row = {**self.current, "state": state, metric: value, "finished": round(time.time(), 3)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


class WandbTracker:
    """One W&B run per trial, grouped by sweep (``WANDB_MODE=offline`` works without an
    account; the key, if any, comes from ``WANDB_API_KEY``)."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec, study_name: str, options: dict):
        self.wandb = _need("wandb", "wandb")
        self.project = options.get("wandb_project") or spec.name
        self.group = study_name
        self.run: Any = None

    def start(self, number: int, params: dict, run_dir: Path) -> None:
        self.run = self.wandb.init(project=self.project, group=self.group,
                                   name=f"trial-{number:04d}", config=params, dir=str(run_dir),
                                   reinit="finish_previous")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, state: str, value: float | None, metric: str) -> None:
        if self.run is None:
            return
        self.run.summary["state"] = state
        if value is not None:
            self.run.summary[metric] = value
        self.run.finish(exit_code=0 if state != "fail" else 1)
        self.run = None


class MlflowTracker:
    """One MLflow run per trial in an experiment named after the sweep; the tracking store
    defaults to ``sqlite:///<sweep>/mlflow.db`` (MLflow 3's file store needs
    ``MLFLOW_ALLOW_FILE_STORE=true``)."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec, study_name: str, options: dict):
        self.mlflow = _need("mlflow", "mlflow")
        uri = (options.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
               or f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}")
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(study_name)
        self.active = False

    def start(self, number: int, params: dict, run_dir: Path) -> None:
        self.mlflow.start_run(run_name=f"trial-{number:04d}")
        self.mlflow.log_params({k: str(v) for k, v in params.items()})
        self.mlflow.set_tag("run_dir", str(run_dir))
        self.active = True

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.active:
            self.mlflow.log_metrics({_mlflow_name(k): v for k, v in metrics.items()}, step=step)

    def finish(self, state: str, value: float | None, metric: str) -> None:
        if not self.active:
            return
        if value is not None:
            self.mlflow.log_metric(_mlflow_name(metric), value)
        self.mlflow.end_run(status={"complete": "FINISHED", "pruned": "KILLED"}.get(state,
                                                                                   "FAILED"))
        self.active = False


def _mlflow_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def _need(module: str, extra_pkg: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--track {module} needs the {extra_pkg} package: pip install "
                          f"{extra_pkg} (or reprlab[track])") from None


TRACKERS: dict[str, Callable[..., Any]] = {
    "jsonl": JsonlTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
}


def check_trackers(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ConfigError(f"unknown tracker {bad[0]!r}; use {', '.join(TRACKERS)}")
    return tuple(dict.fromkeys(["jsonl", *names]))


def require_installed(names: tuple[str, ...] | list[str]) -> None:
    """One clear line now (before any trial) when a tracker's package is missing."""
    for n in check_trackers(names):
        if n != "jsonl":
            _need(n, n)


def make_trackers(names: tuple[str, ...], sweep_dir: Path, spec: SweepSpec, study_name: str,
                  options: dict) -> list[Any]:
    return [TRACKERS[n](sweep_dir, spec, study_name, options) for n in check_trackers(names)]


__all__ = ["TRACKERS", "check_trackers", "make_trackers", "require_installed"]
