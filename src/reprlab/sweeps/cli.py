"""`reprlab sweep` (run or resume a sweep), `reprlab sweep status DIR`, `reprlab sweep report DIR`."""

from __future__ import annotations

from dataclasses import dataclass

from reprlab.cliutil import opt, require, split_list
from reprlab.errors import ReprlabError


def _default_workers() -> int:
    import os

    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class SweepCommand:
    """Search any reprlab workflow's options with Optuna: trials are ordinary run directories.

    The sweep file has the shape of a W&B sweep (command, method, metric, parameters,
    early_terminate, trials); the study lives in <out>/study.db, so running the same command
    again resumes a killed sweep without redoing finished trials.

    Examples:
      reprlab sweep sweep.yaml --out runs/sweep                 # local, parallel trials
      reprlab sweep sweep.yaml --executor slurm --partition gpu --gpus 1 --trials 32
      reprlab sweep sweep.yaml --executor ray --address auto
      reprlab sweep status runs/sweep                           # progress and best trial
      reprlab sweep report runs/sweep                           # importances, plots, best config
    """

    target: str = opt(help="sweep YAML, a sweep directory to resume, or `status` / `report`",
                      positional=True)
    dir: str | None = opt(None, help="sweep directory (with status / report)", positional=True)
    out: str = opt("", help="sweep directory (default: runs/sweep; a directory given as "
                   "target is its own)")
    executor: str = opt("local", help="local, slurm, submitit-local, submitit-debug or ray")
    workers: int = opt(0, help="trials at once (default: half the CPU cores, at most 4)")
    trials: int | None = opt(None, help="number of trials (overrides the file's trials)")
    storage: str = opt("", help="study database URL to share one study between machines "
                       "(default: sqlite in the sweep directory)")
    track: list[str] = opt(factory=lambda: ["jsonl"], help="trackers: jsonl (always), wandb, "
                           "mlflow")
    wandb_project: str = opt("", help="W&B project (default: the sweep's name)")
    mlflow_uri: str = opt("", help="MLflow tracking URI (default: sqlite:///<out>/mlflow.db)")
    partition: str = opt("", help="SLURM partition")
    time: int = opt(60, help="SLURM time limit per trial, minutes")
    gpus: int = opt(0, help="SLURM GPUs per trial")
    cpus: int = opt(1, help="SLURM CPUs per trial")
    mem_gb: float = opt(0.0, help="SLURM memory per trial, GB (0: the partition's default)")
    account: str = opt("", help="SLURM account")
    qos: str = opt("", help="SLURM QOS")
    slurm: list[str] = opt(factory=list, help="extra sbatch options KEY=VALUE,...")
    address: str = opt("", help="Ray cluster address (auto, host:port; default: start Ray here)")
    importance: str = opt("ped-anova", help="parameter importance evaluator: ped-anova, "
                          "fanova or mdi")
    no_report: bool = opt(False, help="skip writing report.html at the end")
    no_progress: bool = opt(False, help="hide the progress bar")

    def __post_init__(self) -> None:
        from reprlab.sweeps.executors import EXECUTORS
        from reprlab.sweeps.trackers import check_trackers

        if self.target in ("status", "report"):
            require(bool(self.dir), f"give the sweep directory: reprlab sweep {self.target} DIR")
        else:
            require(self.dir is None, f"unexpected argument {self.dir!r}; give one sweep file")
        require(self.executor in EXECUTORS,
                f"unknown --executor {self.executor!r}; use {', '.join(EXECUTORS)}")
        require(self.workers >= 0, f"--workers must be 0 (automatic) or more, got {self.workers}")
        require(self.trials is None or self.trials >= 1, "--trials must be at least 1")
        require(self.importance in ("ped-anova", "fanova", "mdi"),
                f"unknown --importance {self.importance!r}; use ped-anova, fanova or mdi")
        self.track = list(check_trackers(split_list(self.track)))
        for kv in self.slurm:
            require("=" in kv, f"--slurm takes KEY=VALUE pairs, got {kv!r}")


def run(cfg: SweepCommand) -> int:
    from reprlab.sweeps.executors import ExecOptions
    from reprlab.sweeps.report import status, status_text, write_report
    from reprlab.sweeps.run import run_sweep

    if cfg.target == "status":
        print(status_text(status(cfg.dir)))
        return 0
    if cfg.target == "report":
        path = write_report(cfg.dir, cfg.importance)
        print(status_text(status(cfg.dir)))
        print(f"report: {path}")
        return 0
    opts = ExecOptions(
        workers=cfg.workers or _default_workers(), track=tuple(cfg.track),
        track_options={"wandb_project": cfg.wandb_project, "mlflow_uri": cfg.mlflow_uri},
        partition=cfg.partition, time_min=cfg.time, gpus=cfg.gpus, cpus=cfg.cpus,
        mem_gb=cfg.mem_gb, account=cfg.account, qos=cfg.qos,
        slurm_extra=dict(kv.split("=", 1) for kv in cfg.slurm), address=cfg.address,
        progress=not cfg.no_progress)
    s = run_sweep(cfg.target, cfg.out or None, executor=cfg.executor, options=opts,
                  trials=cfg.trials, storage=cfg.storage or None, report=not cfg.no_report,
                  importance=cfg.importance)
    print(status_text(s))
    if not cfg.no_report:
        print(f"report: {s['sweep']}/report.html")
    failed = s["counts"].get("fail", 0)
    if failed:
        raise ReprlabError(f"{failed} of {s['finished']} finished trials failed (the sweep is not "
                           f"complete); see their logs under {s['sweep']}/trials/")
    return 0


def register(subparsers) -> None:
    from reprlab.cliutil import subcommand

    subcommand(subparsers, "sweep", SweepCommand, run,
               help="search a workflow's options with Optuna (local, SLURM or Ray)")
