"""A worker: claim a trial from the study, run it, tell the study; repeat until the budget is
spent. Every executor (local processes, submitit jobs, Ray Tune trials) runs this same code."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps.spec import SweepSpec

logger = logging.getLogger(__name__)

MAX_FAILS_IN_A_ROW = 3


class Context:
    """What a worker needs, rebuilt in each process from the sweep directory alone."""

    def __init__(self, sweep_dir: str | Path, track: tuple[str, ...] = ("jsonl",),
                 track_options: dict[str, str] | None = None):
        from reprlab.sweeps.commands import subcommand_parser
        from reprlab.sweeps.study import open_study, read_meta
        from reprlab.sweeps.trackers import make_trackers

        self.sweep_dir = Path(sweep_dir).resolve()
        self.meta = read_meta(self.sweep_dir)
        self.spec = SweepSpec.from_dict(self.meta["spec"])
        self.study = open_study(self.sweep_dir, self.meta)
        self.parser, self.words = subcommand_parser(self.spec.command)
        self.trackers = make_trackers(track, self.sweep_dir, self.spec,
                                      self.meta["study_name"], track_options or {})

    def share_key(self, argv: list[str]) -> str | None:
        from reprlab.sweeps.share import capture_key

        try:
            ns = self.parser.parse_args(argv[len(self.words):])
        except SystemExit:
            return None
        return capture_key(tuple(self.words), ns)


def run_one(ctx: Context, trial: Any) -> Any:
    """Run a claimed trial and record its outcome in the study."""
    from optuna.trial import TrialState

    from reprlab.sweeps.commands import trial_argv
    from reprlab.sweeps.trial import run_trial

    run_dir = ctx.sweep_dir / "trials" / f"{trial.number:04d}"
    argv = trial_argv(ctx.spec, ctx.parser, dict(trial.params), str(run_dir))
    try:
        out = run_trial(trial, ctx.spec, argv, run_dir, ctx.sweep_dir, ctx.trackers,
                        ctx.share_key(argv))
    except KeyboardInterrupt:
        from reprlab.sweeps.study import requeue_trial

        requeue_trial(ctx.study, trial, ctx.sweep_dir)
        raise
    trial.set_user_attr("run", {"argv": argv, "run_dir": str(run_dir), **out.info,
                                **({"message": out.message} if out.message else {})})
    if out.state == "complete":
        ctx.study.tell(trial, out.value)
    elif out.state == "pruned":
        ctx.study.tell(trial, state=TrialState.PRUNED)
    else:
        ctx.study.tell(trial, state=TrialState.FAIL)
    logger.info("trial %d %s%s", trial.number, out.state,
                f" {out.value:.6g}" if out.value is not None else f" ({out.message})")
    return out


def work(sweep_dir: str | Path, max_trials: int | None = None, track: tuple[str, ...] = ("jsonl",),
         track_options: dict[str, str] | None = None, threads: int | None = None,
         watch_parent: bool = False, progress_bar: bool = False,
         on_claim: Any = None) -> int:
    """Run trials of the sweep in ``sweep_dir`` until none is left (or ``max_trials``);
    returns how many ran. Raises :class:`ConfigError` on a mistake no trial can avoid."""
    from reprlab.sweeps.study import claim

    if threads:
        import torch

        torch.set_num_threads(threads)
    if watch_parent:
        _exit_with_parent()
    ctx = Context(sweep_dir, track, track_options)
    done = fails = 0
    bar = _bar(ctx, progress_bar)
    while max_trials is None or done < max_trials:
        trial = claim(ctx.study, ctx.spec, ctx.sweep_dir)
        if trial is None:
            break
        if on_claim is not None:
            on_claim(trial)
        out = run_one(ctx, trial)
        done += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"last {out.state} {out.value if out.value is not None else ''}")
        if out.fatal:
            raise ConfigError(out.message)
        fails = fails + 1 if out.state == "fail" else 0
        if fails >= MAX_FAILS_IN_A_ROW:
            raise ConfigError(f"{fails} trials failed in a row; the last (trial {trial.number}, "
                              f"see {ctx.sweep_dir / 'trials' / f'{trial.number:04d}' / 'log.txt'}"
                              f"): {out.message}")
    if bar is not None:
        bar.close()
    return done


def _bar(ctx: Context, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    from reprlab.sweeps.study import counted

    n, _ = counted(ctx.study)
    return tqdm(total=ctx.spec.trials, initial=min(n, ctx.spec.trials), desc="sweep",
                unit="trial")


def _exit_with_parent() -> None:
    """Local workers end when the sweep process that started them is killed."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


__all__ = ["Context", "run_one", "work"]
