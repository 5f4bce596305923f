"""Sweeps: search any reprlab workflow's options with Optuna; trials are run directories.

>>> from reprlab.sweeps import run_sweep, status
>>> run_sweep("sweep.yaml", "runs/sweep")
>>> status("runs/sweep")["best"]

Workflows that train report per-step metrics through :func:`reprlab.sweeps.progress.report`
(pruning, the JSONL log, W&B and MLflow all hang off it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_spec", "run_sweep", "status", "write_report"]


def __getattr__(name: str) -> Any:  # lazy: importing reprlab.sweeps pulls in nothing heavy
    if name == "run_sweep":
        from reprlab.sweeps.run import run_sweep

        return run_sweep
    if name == "load_spec":
        from reprlab.sweeps.spec import load_spec

        return load_spec
    if name in ("status", "write_report"):
        from reprlab.sweeps import report as _report

        return getattr(_report, name)
    raise AttributeError(name)
