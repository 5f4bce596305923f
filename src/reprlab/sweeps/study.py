"""The Optuna study behind a sweep: storage, samplers and pruners (registries), claiming the
next trial under a lock, and putting back trials whose worker died (resume after a kill)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.io import read_json, write_json
from reprlab.sweeps.spec import Param, SweepSpec

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
STORAGE_ENV = "REPRLAB_SWEEP_STORAGE"


def _samplers() -> dict[str, Callable[[SweepSpec], Any]]:
    import optuna

    return {
        # grid points are enqueued up front, so any sampler serves them in order
        "grid": lambda s: optuna.samplers.RandomSampler(seed=s.seed),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s.seed),
        "tpe": lambda s: optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=min(10, max(2, s.trials // 4))),
    }


def _pruners() -> dict[str, Callable[[SweepSpec], Any]]:
    import optuna

    return {
        "none": lambda s: optuna.pruners.NopPruner(),
        "median": lambda s: optuna.pruners.MedianPruner(
            n_startup_trials=s.pruning.min_trials, n_warmup_steps=s.pruning.warmup),
        "hyperband": lambda s: optuna.pruners.HyperbandPruner(
            min_resource=s.pruning.min_iter, max_resource=s.pruning.max_iter or "auto",
            reduction_factor=s.pruning.eta),
    }


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def storage_url(sweep_dir: Path, meta: dict) -> str:
    url = meta.get("storage") or default_storage(sweep_dir)
    if url.startswith("env:"):
        url = os.environ.get(url[4:], "")
        if not url:
            raise ConfigError(f"this sweep's study database URL holds a password, so it is "
                              f"read from ${STORAGE_ENV}; set it and run again")
    return url


def open_study(sweep_dir: Path, meta: dict) -> Any:
    """Load (or create) the study of a sweep directory."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SweepSpec.from_dict(meta["spec"])
    url = storage_url(sweep_dir, meta)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        storage = optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL for the user
        raise ConfigError(f"cannot open the study database {meta.get('storage') or url}: "
                          f"{str(exc).splitlines()[0]}") from None
    if url.startswith("sqlite:///") and _local_fs(Path(url[len("sqlite:///"):]).parent):
        _sqlite_wal(storage)
    study = optuna.create_study(
        storage=storage, study_name=meta["study_name"], load_if_exists=True,
        direction=spec.goal, sampler=_samplers()[spec.method](spec),
        pruner=_pruners()[spec.pruning.type](spec))
    have = study.user_attrs.get("search_hash")
    if have is None:
        study.set_user_attr("search_hash", spec.search_hash())
        study.set_user_attr("metric", spec.metric)
    elif have != spec.search_hash():
        raise ConfigError(f"study {meta['study_name']!r} in {url} belongs to a different sweep "
                          "(command, metric or search space changed); use another --out")
    return study


NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "lustre", "gpfs", "beegfs", "fuse.sshfs", "9p",
              "ceph", "glusterfs", "panfs", "wekafs"}


def _local_fs(path: Path) -> bool:
    """Whether ``path`` is on a local file system (SQLite's WAL mode needs one)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    target = str(path.resolve())
    best = max((m for m in mounts if target == m[0] or target.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best is not None and best[1] not in NETWORK_FS


def _sqlite_wal(storage: Any) -> None:
    """WAL journal and normal syncing: a trial's few commits cost a fraction of the default
    (readers never block the writer); still crash-safe for the study."""
    import sqlalchemy

    def pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # later connections run the pragmas


def init_sweep_dir(sweep_dir: Path, spec: SweepSpec, storage: str | None) -> dict:
    """Write (or check) ``sweep.json``: the resolved spec, the working directory and where the
    study lives. Rerunning the same sweep resumes it; ``trials`` may grow."""
    from reprlab.report.rundir import check_out, claim

    check_out(sweep_dir, "sweep")  # another workflow's run is left as it is
    sweep_dir.mkdir(parents=True, exist_ok=True)
    claim(sweep_dir, "sweep")
    path = sweep_dir / SWEEP_FILE
    stored_url = storage
    if storage and _has_password(storage):
        os.environ.setdefault(STORAGE_ENV, storage)
        stored_url = f"env:{STORAGE_ENV}"
    if path.exists():
        meta = read_json(path)
        old = SweepSpec.from_dict(meta["spec"])
        if old.search_hash() != spec.search_hash():
            raise ConfigError(f"{sweep_dir} holds a different sweep (command, metric or search "
                              "space changed); use another --out")
        if storage and meta.get("storage") != stored_url:
            raise ConfigError(f"{sweep_dir} keeps its study in {meta.get('storage') or 'study.db'}"
                              "; drop --storage or use another --out")
        meta["spec"] = spec.to_dict()
    else:
        meta = {"spec": spec.to_dict(), "study_name": f"{spec.name}-{spec.search_hash()[:8]}",
                "storage": stored_url, "cwd": os.getcwd(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, meta)
    return meta


def read_meta(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE}); run "
                          "`reprlab sweep sweep.yaml --out DIR` first")
    return read_json(path)


#: the lock under which a worker asks for a trial and records itself on it
CLAIM_LOCK = ".claim.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_stale(study: Any, sweep_dir: Path) -> int:
    """Trials left RUNNING by a worker on this host that no longer exists, or by a worker
    that died between asking for the trial and recording itself on it: mark them failed
    (``stale``), remove their half-written run directory and enqueue their parameters again.
    Returns how many were put back.

    :func:`claim` asks and records its worker under the claim lock, which this holds too: a
    RUNNING trial without a worker seen here belongs to no live process, on any host. A
    study shared with other sweep directories (``--storage``) is also claimed from under
    their locks, so there such a trial counts as cut off only once it is ``ORPHAN_AFTER_S``
    old."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    shared = bool(read_meta(sweep_dir).get("storage"))
    n = 0
    with file_lock(sweep_dir / CLAIM_LOCK):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            w = info(t)
            if "pid" in w and (w.get("host") != host or _alive(int(w["pid"]))):
                continue
            if "pid" not in w and shared and _age_s(t) < ORPHAN_AFTER_S:
                continue
            if not _salvage(study, t, sweep_dir):
                requeue_trial(study, t, sweep_dir)
                n += 1
    return n


#: seconds after which a RUNNING trial of a shared study that no worker has recorded itself
#: on counts as cut off (a live worker records itself within milliseconds of asking)
ORPHAN_AFTER_S = 60.0


def _age_s(t: Any) -> float:
    """Seconds since the trial was asked for (Optuna stamps it in local time)."""
    import datetime

    start = t.datetime_start
    return (datetime.datetime.now() - start).total_seconds() if start else float("inf")


def _salvage(study: Any, t: Any, sweep_dir: Path) -> bool:
    """A trial whose run finished (manifest written) just before its worker died: record its
    value instead of running it again."""
    from reprlab.sweeps.trial import MetricMissing, objective

    run_dir = sweep_dir / "trials" / f"{t.number:04d}"
    if not (run_dir / "manifest.json").exists():
        return False
    try:
        value = objective(run_dir, SweepSpec.from_dict(read_meta(sweep_dir)["spec"]).metric)
    except (MetricMissing, OSError, ValueError):
        return False
    study._storage.set_trial_user_attr(t._trial_id, "salvaged", True)
    study.tell(t.number, value)
    logger.info("trial %d had finished before its worker died; value %g kept", t.number, value)
    return True


def requeue_trial(study: Any, t: Any, sweep_dir: Path) -> None:
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(t._trial_id, "stale", True)
    study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    shutil.rmtree(sweep_dir / "trials" / f"{t.number:04d}", ignore_errors=True)
    # a trial cut off before its parameters were suggested still has its queued grid point
    params = dict(t.params) or dict(t.system_attrs.get("fixed_params", {}))
    study.enqueue_trial(params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
    logger.info("trial %d was cut off; its parameters are queued again", t.number)


def enqueue_grid(study: Any, spec: SweepSpec) -> int:
    """Queue every grid point not already finished, running or waiting."""
    from optuna.trial import TrialState

    seen = set()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            continue
        seen.add(_key(t.params or t.system_attrs.get("fixed_params", {})))
    n = 0
    for point in spec.grid():
        if _key(point) not in seen:
            study.enqueue_trial(point, skip_if_exists=False)
            seen.add(_key(point))
            n += 1
    return n


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def counted(study: Any) -> tuple[int, int]:
    """(trials that count towards the budget, trials waiting in the queue)."""
    from optuna.trial import TrialState

    n = waiting = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            waiting += 1
        elif not t.user_attrs.get("stale"):
            n += 1
    return n, waiting


def claim(study: Any, spec: SweepSpec, sweep_dir: Path) -> Any | None:
    """Ask the study for the next trial (queued ones first) unless the budget is spent; the
    check and the ask happen under one lock so parallel workers never overshoot."""
    with file_lock(sweep_dir / CLAIM_LOCK):
        n, waiting = counted(study)
        if not waiting and (spec.method == "grid" or n >= spec.trials):
            return None
        trial = study.ask()
        suggest(trial, spec)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        return trial


def info(t: Any) -> dict[str, Any]:
    """A trial's bookkeeping in one dict: worker (host, pid) and run (argv, run_dir, seconds,
    cpu_seconds, steps, capture, message), kept as two user attributes so that a trial costs
    few database writes."""
    attrs = dict(t.user_attrs)
    return {**attrs, **attrs.get("worker", {}), **attrs.get("run", {})}


def suggest(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    return {p.name: _suggest_one(trial, p) for p in spec.searched}


def _suggest_one(trial: Any, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, list(p.values))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


__all__ = ["claim", "enqueue_grid", "info", "init_sweep_dir", "open_study", "read_meta",
           "requeue_stale", "requeue_trial"]
