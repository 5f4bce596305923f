"""Where trials run: local worker processes (default), submitit (SLURM, or its local and
debug executors, one job per trial), or Ray Tune. All run :func:`reprlab.sweeps.worker.work`
against the one study, so the search (Optuna's sampler) and the bookkeeping are the same
everywhere; the executor only decides where a worker process lives.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps.worker import work

logger = logging.getLogger(__name__)


@dataclass
class ExecOptions:
    workers: int = 1
    track: tuple[str, ...] = ("jsonl",)
    track_options: dict[str, str] = field(default_factory=dict)
    partition: str = ""
    time_min: int = 60
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 0.0
    account: str = ""
    qos: str = ""
    slurm_extra: dict[str, str] = field(default_factory=dict)
    address: str = ""
    progress: bool = True


def remaining(sweep_dir: Path) -> int:
    from reprlab.sweeps.spec import SweepSpec
    from reprlab.sweeps.study import counted, open_study, read_meta

    meta = read_meta(sweep_dir)
    spec = SweepSpec.from_dict(meta["spec"])
    n, waiting = counted(open_study(sweep_dir, meta))
    return waiting if spec.method == "grid" else max(0, spec.trials - n) + waiting


# -- local --------------------------------------------------------------------------------
def _local_worker(sweep_dir: str, track: tuple[str, ...], track_options: dict, threads: int,
                  errors: Any) -> None:
    try:
        work(sweep_dir, track=track, track_options=track_options, threads=threads,
             watch_parent=True)
    except ConfigError as exc:
        errors.put(str(exc))
        raise SystemExit(2) from None


def run_local(sweep_dir: Path, opts: ExecOptions) -> None:
    """``workers`` processes (one: trials run in this process)."""
    if opts.workers <= 1:
        work(sweep_dir, track=opts.track, track_options=opts.track_options,
             progress_bar=opts.progress)
        return
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // opts.workers)
    procs = [ctx.Process(target=_local_worker, name=f"reprlab-sweep-{i}",
                         args=(str(sweep_dir), opts.track, opts.track_options, threads, errors))
             for i in range(opts.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    msgs = []
    while not errors.empty():
        msgs.append(errors.get())
    if msgs:
        raise ConfigError(msgs[0])
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise ConfigError(f"a sweep worker exited with code {bad[0]}; see the trials' log.txt")


# -- submitit -----------------------------------------------------------------------------
class TrialJob:
    """A submitit job that runs one trial; on preemption or timeout it is requeued and the
    cut-off trial's parameters are queued again."""

    def __init__(self, sweep_dir: str, track: tuple[str, ...], track_options: dict, cwd: str,
                 requeue: int | None = None):
        self.sweep_dir, self.track, self.track_options = sweep_dir, track, track_options
        self.cwd, self.requeue = cwd, requeue
        self.trial_number: int | None = None

    def __call__(self) -> int:
        if os.path.isdir(self.cwd):
            os.chdir(self.cwd)
        if self.requeue is not None:
            _requeue(Path(self.sweep_dir), self.requeue)
        return work(self.sweep_dir, max_trials=1, track=self.track,
                    track_options=self.track_options,
                    on_claim=lambda t: setattr(self, "trial_number", t.number))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrialJob(
            self.sweep_dir, self.track, self.track_options, self.cwd, self.trial_number))


def _requeue(sweep_dir: Path, number: int) -> None:
    from optuna.trial import TrialState

    from reprlab.sweeps.study import open_study, read_meta, requeue_trial

    study = open_study(sweep_dir, read_meta(sweep_dir))
    t = study.trials[number]
    if t.state == TrialState.RUNNING:
        requeue_trial(study, t, sweep_dir)


def slurm_parameters(opts: ExecOptions, n_jobs: int, name: str) -> dict[str, Any]:
    """The submitit ``update_parameters`` of a SLURM sweep (pure; tested)."""
    params: dict[str, Any] = {
        "name": name, "timeout_min": int(opts.time_min), "cpus_per_task": int(opts.cpus),
        "tasks_per_node": 1, "nodes": 1,
        "slurm_array_parallelism": max(1, min(opts.workers, n_jobs)),
    }
    if opts.gpus:
        params["gpus_per_node"] = int(opts.gpus)
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    for key, value in (("partition", opts.partition), ("account", opts.account),
                       ("qos", opts.qos)):
        if value:
            params[f"slurm_{key}"] = value
    if opts.slurm_extra:
        params["slurm_additional_parameters"] = dict(opts.slurm_extra)
    return params


def run_submitit(sweep_dir: Path, opts: ExecOptions, cluster: str) -> None:
    """One submitit job per trial on ``cluster`` (slurm, local or debug)."""
    import submitit

    from reprlab.sweeps.study import read_meta

    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs SLURM's sbatch on PATH; run on a cluster "
                          "login node, or use --executor local or submitit-local")
    meta = read_meta(sweep_dir)
    cwd = meta.get("cwd") or os.getcwd()
    while (n := remaining(sweep_dir)) > 0:
        wave = n if cluster == "slurm" else min(n, max(1, opts.workers))
        executor = submitit.AutoExecutor(folder=str(sweep_dir / "jobs" / "%j"), cluster=cluster)
        executor.update_parameters(**_for_cluster(slurm_parameters(opts, wave, "reprlab-sweep"),
                                                  cluster))
        job = TrialJob(str(sweep_dir), opts.track, opts.track_options, cwd)
        with executor.batch():
            jobs = [executor.submit(job) for _ in range(wave)]
        logger.info("submitted %d %s job(s): %s", wave, cluster, ", ".join(j.job_id for j in jobs))
        ran = 0
        for j in jobs:
            try:
                ran += int(j.result() or 0)
            except Exception as exc:  # noqa: BLE001 - surface the job's own one-line error
                raise ConfigError(_job_error(exc, j)) from None
        if ran == 0:
            break


def _for_cluster(params: dict[str, Any], cluster: str) -> dict[str, Any]:
    if cluster == "slurm":
        return params
    return {k: v for k, v in params.items() if not k.startswith("slurm_")}


def _job_error(exc: Exception, job: Any) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln for ln in lines if "Error:" in ln]
    last = (found or lines or ["job failed"])[-1]
    return f"sweep job {job.job_id} failed: {last.split('Error: ', 1)[-1]}"


# -- Ray Tune -----------------------------------------------------------------------------
def _check_address(address: str) -> None:
    hostport = address.split("://", 1)[-1]
    if address in ("", "auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise ConfigError(f"cannot reach a Ray cluster at {address}; start one with "
                          "`ray start --head` or drop --address to run Ray here") from None


def run_ray(sweep_dir: Path, opts: ExecOptions) -> None:
    """Ray Tune schedules the trials (one Tune trial = one sweep trial, on a Ray worker); the
    search stays Optuna's, on the sweep's study."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("--executor ray needs Ray Tune: pip install 'ray[tune]' "
                          "(or reprlab[ray])") from None
    from reprlab.sweeps.study import read_meta

    _check_address(opts.address)
    n = remaining(sweep_dir)
    if n == 0:
        return
    cwd = read_meta(sweep_dir).get("cwd") or os.getcwd()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if opts.address in ("", "local"):
                ray.init(num_cpus=max(1, opts.workers), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=opts.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ConfigError(f"cannot reach a Ray cluster at {opts.address}: "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        sweep, track, track_opts = str(sweep_dir), opts.track, dict(opts.track_options)

        def trainable(config: dict) -> None:
            if os.path.isdir(cwd):
                os.chdir(cwd)
            ran = work(sweep, max_trials=1, track=track, track_options=track_opts, threads=1)
            tune.report({"trials_run": ran})

        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=max(1, opts.workers)),
            run_config=tune.RunConfig(storage_path=str((sweep_dir / "ray").resolve()),
                                      name="tune", verbose=0))
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            raise ConfigError(f"a Ray trial failed: {_job_error(errors[0], _Named('ray'))}")
    finally:
        if started_here:
            ray.shutdown()


class _Named:
    def __init__(self, job_id: str):
        self.job_id = job_id


EXECUTORS: dict[str, Callable[[Path, ExecOptions], None]] = {
    "local": run_local,
    "slurm": lambda d, o: run_submitit(d, o, "slurm"),
    "submitit-local": lambda d, o: run_submitit(d, o, "local"),
    "submitit-debug": lambda d, o: run_submitit(d, o, "debug"),
    "ray": run_ray,
}

__all__ = ["EXECUTORS", "ExecOptions", "TrialJob", "precheck", "run_local", "run_ray", "run_submitit",
           "slurm_parameters"]


def precheck(executor: str, opts: ExecOptions) -> None:
    """Executor problems that must stop a sweep before any trial starts."""
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs SLURM's sbatch on PATH; run on a cluster "
                          "login node, or use --executor local or submitit-local")
    if executor == "ray":
        try:
            import ray  # noqa: F401
            from ray import tune  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs Ray Tune: pip install 'ray[tune]' "
                              "(or reprlab[ray])") from None
        _check_address(opts.address)
    if opts.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {opts.workers}")
