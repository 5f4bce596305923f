"""The sweep file: a W&B-sweep-shaped YAML, read into a validated :class:`SweepSpec`.

::

    command: probe --model minilm --data builtin:cities --probes logistic
    method: tpe                 # grid | random | tpe (W&B's "bayes" is read as tpe)
    metric: {name: best.val_acc, goal: maximize}
    parameters:
      l2: {distribution: log_uniform, min: 1e-4, max: 1.0}
      positions: {values: [last, mean]}
      bootstrap: {value: 0}                       # fixed, not searched
    early_terminate: {type: median, warmup: 2}  # or {type: hyperband, min_iter: 1, eta: 3}
    trials: 16

Every problem raises :class:`~reprlab.errors.ConfigError` with one line that names the fix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = {"grid": "grid", "random": "random", "tpe": "tpe", "bayes": "tpe"}
GOALS = ("maximize", "minimize")
PRUNERS = ("median", "hyperband", "none")
#: distribution name -> (kind, log); kinds: float, int, categorical
DISTRIBUTIONS = {
    "uniform": ("float", False), "log_uniform": ("float", True),
    "log_uniform_values": ("float", True), "int_uniform": ("int", False),
    "q_uniform": ("float", False), "int_log_uniform": ("int", True),
    "categorical": ("categorical", False), "constant": ("constant", False),
}
_KEYS = {"command", "method", "metric", "parameters", "early_terminate", "trials", "seed",
         "name", "description", "program", "project", "entity", "run_cap"}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) option: ``kind`` float | int | categorical | constant."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Pruning:
    type: str = "none"
    warmup: int = 0          # steps before a trial may be pruned (median)
    min_trials: int = 2      # finished trials before pruning starts (median)
    min_iter: int = 1        # hyperband min resource
    max_iter: int | None = None
    eta: int = 3
    metric: str | None = None  # intermediate metric name (default: the objective's last part)


@dataclass(frozen=True)
class SweepSpec:
    command: tuple[str, ...]
    metric: str
    goal: str = "maximize"
    method: str = "tpe"
    params: tuple[Param, ...] = ()
    pruning: Pruning = field(default_factory=Pruning)
    trials: int = 0
    seed: int = 0
    name: str = "sweep"

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.kind != "constant"]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the searched values (grid method), in file order."""
        ps = self.searched
        return [dict(zip([p.name for p in ps], combo))
                for combo in itertools.product(*[p.values for p in ps])]

    def constants(self) -> dict[str, Any]:
        return {p.name: p.values[0] for p in self.params if p.kind == "constant"}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["command"] = list(self.command)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        params = tuple(Param(**{**p, "values": tuple(p["values"])}) for p in d["params"])
        return cls(**{**d, "command": tuple(d["command"]), "params": params,
                      "pruning": Pruning(**d["pruning"])})

    def search_hash(self) -> str:
        """Identity of the search (command, metric, space, method); ``trials`` may change."""
        d = self.to_dict()
        d.pop("trials")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_spec(path: str | Path, trials: int | None = None) -> SweepSpec:
    """Read and validate a sweep YAML file (``trials`` overrides the file's)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} not found; give the path of a sweep YAML")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(raw, trials=trials, source=str(p))


def parse_spec(raw: Any, trials: int | None = None, source: str = "sweep file") -> SweepSpec:
    """Validate a parsed sweep mapping; see the module docstring for the keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping with command, metric and parameters")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; use command, method, metric, "
                          "parameters, early_terminate, trials, seed, name")
    command = _command(raw.get("command"), source)
    metric, goal = _metric(raw.get("metric"), source)
    method = str(raw.get("method", "tpe")).lower()
    if method not in METHODS:
        raise ConfigError(f"{source}: unknown method {method!r}; use grid, random or tpe")
    method = METHODS[method]
    params = _params(raw.get("parameters"), method, source)
    if not any(p.kind != "constant" for p in params):
        raise ConfigError(f"{source}: the search space is empty; give parameters with `values` "
                          "or a `distribution` with min and max")
    pruning = _pruning(raw.get("early_terminate"), source)
    n = trials if trials is not None else raw.get("trials", raw.get("run_cap"))
    spec = SweepSpec(command=command, metric=metric, goal=goal, method=method, params=params,
                     pruning=pruning, trials=0, seed=_int(raw.get("seed", 0), "seed", source),
                     name=str(raw.get("name") or "sweep"))
    if method == "grid":
        size = len(spec.grid())
        if n is None:
            n = size
        n = _int(n, "trials", source)
        if size > n:
            raise ConfigError(f"{source}: the grid has {size} combinations but trials is {n}; "
                              f"raise trials to {size} or drop it")
        n = size
    else:
        if n is None:
            raise ConfigError(f"{source}: method {method} needs `trials: N` (how many to run)")
        n = _int(n, "trials", source)
    if n < 1:
        raise ConfigError(f"{source}: trials must be at least 1, got {n}")
    return SweepSpec(**{**spec.__dict__, "trials": n})


def _int(v: Any, key: str, source: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ConfigError(f"{source}: {key} must be a whole number, got {v!r}")
    return int(v)


def _command(cmd: Any, source: str) -> tuple[str, ...]:
    if isinstance(cmd, str):
        parts = shlex.split(cmd)
    elif isinstance(cmd, list) and all(isinstance(c, (str, int, float)) for c in cmd):
        parts = [str(c) for c in cmd if not str(c).startswith("${")]  # W&B macros
    else:
        raise ConfigError(f"{source}: give `command:` as a reprlab command line, e.g. "
                          "command: probe --model minilm --data builtin:cities")
    if parts and parts[0] in ("reprlab", "python"):
        parts = parts[1:]
        if parts[:2] == ["-m", "reprlab"] or parts[:2] == ["-m", "reprlab.cli"]:
            parts = parts[2:]
    if not parts:
        raise ConfigError(f"{source}: `command:` is empty; name a reprlab subcommand, e.g. probe")
    return tuple(parts)


def _metric(m: Any, source: str) -> tuple[str, str]:
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict) or not m.get("name"):
        raise ConfigError(f"{source}: give `metric: {{name: best.val_acc, goal: maximize}}` "
                          "(a dotted path into the trial's results.json)")
    goal = str(m.get("goal", "maximize")).lower()
    if goal not in GOALS:
        raise ConfigError(f"{source}: metric goal must be maximize or minimize, got {goal!r}")
    name = str(m["name"])
    if re.search(r"(^|[._/])test", name):
        logger.warning("%s: the sweep chooses its best trial on %s, a test-set metric, so the "
                       "best trial's test figures are no longer held out; choose on a "
                       "validation metric (e.g. best.val_acc) and read the test figures of the "
                       "trial it picks", source, name)
    return name, goal


def _num(v: Any, what: str, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {what} must be a number, got {v!r}") from None
    return float(v)


def _scalar(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)  # list options are comma-separated on the CLI
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _params(raw: Any, method: str, source: str) -> tuple[Param, ...]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `parameters:` must map option names to "
                          "{values: [...]} or {distribution: ..., min: ..., max: ...}")
    out = []
    for name, d in raw.items():
        where = f"{source}: parameter {name!r}"
        if not isinstance(d, dict):
            d = {"values": d} if isinstance(d, list) else {"value": d}
        if "value" in d:
            out.append(Param(str(name), "constant", values=(_scalar(d["value"]),)))
            continue
        dist = d.get("distribution")
        if "values" in d and dist in (None, "categorical"):
            vals = d["values"]
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{where}: `values` must be a non-empty list")
            vals = tuple(dict.fromkeys(_scalar(v) for v in vals))
            out.append(Param(str(name), "categorical", values=vals))
            continue
        if method == "grid":
            raise ConfigError(f"{where} has a distribution; method grid needs `values: [...]` "
                              "for every parameter (or use method random or tpe)")
        if dist is None:
            if "min" not in d or "max" not in d:
                raise ConfigError(f"{where}: give `values: [...]`, `value: x` or "
                                  "`distribution:` with min and max")
            ints = all(isinstance(d[k], int) and not isinstance(d[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        if dist not in DISTRIBUTIONS or DISTRIBUTIONS[dist][0] in ("categorical", "constant"):
            known = ", ".join(k for k, v in DISTRIBUTIONS.items() if v[0] in ("float", "int"))
            raise ConfigError(f"{where}: unknown distribution {dist!r}; use {known}")
        kind, log = DISTRIBUTIONS[dist]
        if "min" not in d or "max" not in d:
            raise ConfigError(f"{where}: distribution {dist} needs min and max")
        lo, hi = _num(d["min"], "min", where), _num(d["max"], "max", where)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"{where}: min must be below max, got min {lo:g}, max {hi:g}")
        if log and lo <= 0:
            raise ConfigError(f"{where}: {dist} takes the values themselves (min: 1e-5, "
                              f"max: 1e-3) and needs min > 0, got {lo:g}")
        step = None
        if dist == "q_uniform":
            step = _num(d.get("q", 1.0), "q", where)
        if kind == "int":
            lo, hi = float(math.ceil(lo)), float(math.floor(hi))
        out.append(Param(str(name), kind, low=lo, high=hi, log=log, step=step))
    return tuple(out)


def _pruning(raw: Any, source: str) -> Pruning:
    if raw is None:
        return Pruning()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or str(raw.get("type", "")).lower() not in PRUNERS:
        raise ConfigError(f"{source}: early_terminate needs `type: median` or `type: hyperband`")
    kind = str(raw["type"]).lower()
    known = {"type", "warmup", "min_trials", "min_iter", "max_iter", "eta", "s", "metric"}
    bad = sorted(set(raw) - known)
    if bad:
        raise ConfigError(f"{source}: unknown early_terminate key {bad[0]!r}; use warmup, "
                          "min_trials (median) or min_iter, max_iter, eta (hyperband), metric")
    ints = {k: _int(raw[k], f"early_terminate.{k}", source)
            for k in ("warmup", "min_trials", "min_iter", "max_iter", "eta") if k in raw}
    if ints.get("eta", 3) < 2:
        raise ConfigError(f"{source}: early_terminate.eta must be at least 2")
    return Pruning(type=kind, metric=str(raw["metric"]) if raw.get("metric") else None, **ints)


__all__ = ["Param", "Pruning", "SweepSpec", "load_spec", "parse_spec"]
