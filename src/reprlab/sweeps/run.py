"""``run_sweep``: check everything, set up (or resume) the sweep directory and its study, run
the trials on an executor, write the report."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps.spec import SweepSpec, load_spec

logger = logging.getLogger(__name__)


def resolve(target: str | Path | SweepSpec, trials: int | None = None,
            out: str | Path | None = None) -> tuple[SweepSpec, Path]:
    """A sweep YAML, an existing sweep directory (resume) or a spec -> (spec, sweep dir)."""
    from reprlab.sweeps.study import SWEEP_FILE, read_meta

    if isinstance(target, SweepSpec):
        return target, Path(out or "runs/sweep")
    p = Path(target)
    if p.is_dir():
        if not (p / SWEEP_FILE).exists():
            raise ConfigError(f"{p} is a folder but not a sweep directory; give a sweep YAML")
        spec = SweepSpec.from_dict(read_meta(p)["spec"])
        if trials is not None:
            spec = SweepSpec(**{**spec.__dict__, "trials": trials})
            if spec.method == "grid" and trials != len(spec.grid()):
                raise ConfigError(f"a grid sweep runs its {len(spec.grid())} combinations; "
                                  "drop --trials")
        return spec, Path(out or p)
    return load_spec(p, trials=trials), Path(out or "runs/sweep")


def check(spec: SweepSpec, sweep_dir: Path) -> None:
    """Refuse a sweep that cannot work before any trial starts: unknown parameters, a command
    line the subcommand rejects at any corner of the search space."""
    from reprlab.cli import build_parser
    from reprlab.sweeps.commands import check_params, sample_points, trial_argv, validate_argv

    parser = check_params(spec)
    full = build_parser(spec.command[0])
    probe_dir = sweep_dir / "trials" / "check"
    existed = probe_dir.exists()
    try:
        for point in sample_points(spec):
            validate_argv(trial_argv(spec, parser, point, str(probe_dir)), full)
    finally:
        if not existed:  # a config check that made its --out leaves nothing behind
            shutil.rmtree(probe_dir, ignore_errors=True)


def run_sweep(target: str | Path | SweepSpec, out: str | Path | None = None, *,
              executor: str = "local", options: Any = None, trials: int | None = None,
              storage: str | None = None, report: bool = True,
              importance: str = "ped-anova") -> dict[str, Any]:
    """Run (or resume) a sweep; returns :func:`reprlab.sweeps.report.status` at the end.

    >>> run_sweep("sweep.yaml", "runs/sweep", options=ExecOptions(workers=2))
    """
    from reprlab.sweeps.executors import EXECUTORS, ExecOptions, precheck
    from reprlab.sweeps.report import status, write_report
    from reprlab.sweeps.study import enqueue_grid, init_sweep_dir, open_study, requeue_stale
    from reprlab.sweeps.trackers import make_trackers, require_installed

    opts = options or ExecOptions()
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use {', '.join(EXECUTORS)}")
    from reprlab.report.rundir import check_out

    spec, sweep_dir = resolve(target, trials, out)
    check_out(sweep_dir, "sweep")  # before anything is written there
    check(spec, sweep_dir)
    precheck(executor, opts)
    require_installed(opts.track)
    meta = init_sweep_dir(sweep_dir, spec, storage)
    make_trackers(opts.track, sweep_dir, spec, meta["study_name"], opts.track_options)
    study = open_study(sweep_dir, meta)
    put_back = requeue_stale(study, sweep_dir)
    if put_back:
        logger.warning("resuming: %d cut-off trial(s) queued again", put_back)
    if spec.method == "grid":
        enqueue_grid(study, spec)
    EXECUTORS[executor](sweep_dir, opts)
    if report:
        write_report(sweep_dir, importance)
    return status(sweep_dir)


__all__ = ["check", "resolve", "run_sweep"]
