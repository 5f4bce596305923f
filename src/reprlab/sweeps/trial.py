"""Run one trial: the subcommand in this process through ``reprlab.cli.main(argv)``, into an
ordinary run directory, with its metrics log, pruning and trackers attached.

Why in-process rather than a subprocess per trial: a worker process pays the import of torch
and transformers (seconds) once, not once per trial, and intermediate metrics reach the pruner
as plain function calls. Isolation is kept at the worker level (each local worker, submitit job
or Ray task is its own process), and per trial we swap ``sys.argv`` (so the run's manifest
records the trial's own command line) and send its stdout, stderr and logs to ``log.txt``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps import progress
from reprlab.sweeps.spec import SweepSpec
from reprlab.sweeps.watch import LogWatcher

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    state: str                      # complete | pruned | fail
    value: float | None = None
    message: str = ""
    fatal: bool = False             # stop the sweep (a mistake no other trial can avoid)
    info: dict[str, Any] = field(default_factory=dict)


class MetricMissing(ConfigError):
    pass


def lookup(results: Any, name: str) -> Any:
    """``lookup(r, "best.val_acc")``: walk dicts (keys may contain "/" or ".") and lists."""
    if name in ("", None):
        return results
    if isinstance(results, dict):
        if name in results:
            return results[name]
        for sep in (".", "/"):
            head, _, rest = name.partition(sep)
            if rest and head in results:
                try:
                    return lookup(results[head], rest)
                except KeyError:
                    continue
        raise KeyError(name)
    if isinstance(results, list):
        head, _, rest = name.partition(".")
        if head.lstrip("-").isdigit() and -len(results) <= int(head) < len(results):
            return lookup(results[int(head)], rest)
    raise KeyError(name)


def numeric_paths(results: Any, prefix: str = "", limit: int = 400) -> list[str]:
    """Dotted paths of the numbers in ``results`` (for "did you mean" messages)."""
    out: list[str] = []
    if isinstance(results, dict):
        for k, v in results.items():
            out += numeric_paths(v, f"{prefix}{k}.", limit)
    elif isinstance(results, list):
        for i, v in enumerate(results[:3]):
            out += numeric_paths(v, f"{prefix}{i}.", limit)
    elif isinstance(results, (int, float)) and not isinstance(results, bool):
        out.append(prefix[:-1])
    return out[:limit]


def objective(run_dir: Path, metric: str) -> float:
    """The metric of a finished run: ``results.json`` by dotted path, else the last value of
    that name in ``metrics.jsonl``. Raises :class:`MetricMissing` naming what is there."""
    import difflib

    from reprlab.io import read_json

    results = read_json(run_dir / "results.json") if (run_dir / "results.json").exists() else {}
    try:
        value = lookup(results, metric)
    except KeyError:
        logged = [r[metric] for r in progress.read_jsonl(run_dir / "metrics.jsonl")
                  if r.get(metric) is not None]
        if logged:
            return float(logged[-1])
        have = numeric_paths(results)
        close = difflib.get_close_matches(metric, have, n=3, cutoff=0.4)
        shown = ", ".join(close or have[:8])
        raise MetricMissing(f"metric {metric!r} is not in the trial's results.json or "
                            f"metrics.jsonl; {'did you mean' if close else 'it has'} "
                            f"{shown or 'no numbers'}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MetricMissing(f"metric {metric!r} is {value!r}, not a number; name a number in "
                            "results.json") from None
    return value


class _Pruner:
    """Sink that feeds the objective's intermediate values to the trial and stops it early."""

    def __init__(self, trial: Any, spec: SweepSpec):
        self.trial = trial
        name = spec.pruning.metric or spec.metric
        self.names = list(dict.fromkeys([name, name.rsplit(".", 1)[-1], name.rsplit("/", 1)[-1]]))
        self.enabled = spec.pruning.type != "none"
        self.steps = 0
        self.last: int | None = None
        self._lock = threading.Lock()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        value = next((metrics[n] for n in self.names if n in metrics), None)
        if value is None or not math.isfinite(value):
            return
        with self._lock:  # fed by the workflow and by the step-log watcher's thread
            if self.last is not None and step <= self.last:
                # a step already judged (reported and logged both, or a workflow that fits
                # several folds in turn and counts its epochs again for each): the first
                # curve is the one compared across trials
                return
            self.last = step
            self.steps += 1
            self.trial.report(value, step)
            prune = self.enabled and self.trial.should_prune()
        if prune:
            raise progress.TrialPruned(step, value)


@contextlib.contextmanager
def _captured_output(log_path: Path, argv: list[str]):
    root = logging.getLogger()
    if not root.handlers:  # so main()'s basicConfig cannot bind to this trial's log file
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with open(log_path, "a", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        saved, level = list(root.handlers), root.level
        root.handlers = [handler]  # the trial's records go to its log.txt only
        root.setLevel(logging.INFO)
        old_argv = sys.argv
        sys.argv = ["reprlab", *argv]
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield fh
        finally:
            sys.argv = old_argv
            root.handlers = saved
            root.setLevel(level)


def run_trial(trial: Any, spec: SweepSpec, argv: list[str], run_dir: Path,
              sweep_dir: Path, trackers: list[Any], share_key: str | None) -> Outcome:
    """Run ``argv`` as trial ``trial`` into ``run_dir``; never raises for a failing trial."""
    from reprlab.cli import main
    from reprlab.sweeps.share import shared_stores

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    pruner = _Pruner(trial, spec)
    sinks = [progress.JsonlSink(run_dir / "metrics.jsonl"), pruner,
             *[t.log for t in trackers]]
    for t in trackers:
        t.start(trial.number, dict(trial.params), run_dir)
    started = time.time()
    cpu0 = time.process_time()
    info: dict[str, Any] = {}
    out = Outcome("fail")
    share = (shared_stores(run_dir, sweep_dir, share_key) if share_key
             else contextlib.nullcontext({}))
    watcher = LogWatcher(run_dir, pruner) if pruner.enabled else contextlib.nullcontext()
    try:
        rc = _run(main, argv, run_dir, share, sinks, watcher, info)
        if isinstance(rc, Outcome):
            out, rc = rc, None
        cut = getattr(watcher, "pruned", None)
        if rc == 130 and cut is not None:  # stopped by the pruner through the step log
            out = Outcome("pruned", cut.value, f"pruned at step {cut.step}")
            rc = None
        if rc == 130:  # Ctrl-C inside the trial: stop the sweep, the trial runs again later
            raise KeyboardInterrupt
        if rc is not None:
            if rc == 0:
                value = objective(run_dir, spec.metric)
                out = Outcome("complete", value) if math.isfinite(value) else Outcome(
                    "fail", message=f"metric {spec.metric} is {value}")
            else:
                out = Outcome("fail", message=_last_error(run_dir / "log.txt") or f"exit {rc}")
    except MetricMissing as exc:
        out = Outcome("fail", message=str(exc), fatal=True)
    if out.state == "pruned":
        with open(run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"reprlab sweep: {out.message} (the pruner stopped this trial)\n")
    info.update(seconds=round(time.time() - started, 3),
                cpu_seconds=round(time.process_time() - cpu0, 3), steps=pruner.steps)
    out.info = info
    for t in trackers:
        t.finish(out.state, out.value, spec.metric)
    return out


def _run(main: Any, argv: list[str], run_dir: Path, share: Any, sinks: list, watcher: Any,
         info: dict) -> int | Outcome:
    """``main(argv)`` with the output captured and the sinks attached: its exit code, or the
    :class:`Outcome` of a trial pruned from inside."""
    result: int | Outcome = 1
    shared: dict = {}
    try:
        with share as shared, _captured_output(run_dir / "log.txt", argv), \
                progress.listening(*sinks), watcher:
            try:
                result = main(argv)
                shared["ok"] = result == 0
            except progress.TrialPruned as exc:
                result = Outcome("pruned", exc.value, f"pruned at step {exc.step}")
            except KeyboardInterrupt:
                result = 130
            except SystemExit as exc:  # argparse
                result = exc.code if isinstance(exc.code, int) else 2
            except Exception:  # noqa: BLE001 - a crashing trial fails, the sweep goes on
                traceback.print_exc()
                result = 1
    except KeyboardInterrupt:  # delivered while leaving the block
        result = 130
    info.update({k: v for k, v in (shared or {}).items() if k != "ok"})
    return result


def _last_error(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errs or lines or [""])[-1][:300]


__all__ = ["Outcome", "lookup", "objective", "run_trial"]
