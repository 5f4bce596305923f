"""Several methods, several seeds: one row a method, one column a shift, with 95% intervals.

For each given run (one method), seeds ``RUN``, ``RUN-seed1`` … ``RUN-seed{N-1}`` are read, and
the missing ones are trained with the run's own settings, the next seeds and the same reference
cache (a cached reference is shared by every seed). Every seed is
evaluated (or its evaluation read). The interval is a two-level bootstrap: resample seeds, then
rows within each resampled seed, and take the mean accuracy. Runs the coherence guard flags are
marked, and a method with an incoherent seed is never called the winner of a shift.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprlab.errors import ConfigError, StoreError
from reprlab.io import read_json

logger = logging.getLogger(__name__)


def bootstrap_ci(per_seed: list[np.ndarray], n_boot: int = 1000, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, lo, hi): mean over seeds of row accuracy; 95% interval over seeds and rows."""
    means = [float(a.mean()) for a in per_seed]
    mean = float(np.mean(means))
    if n_boot <= 0:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(0, k, size=k)
        stats[b] = np.mean([per_seed[i][rng.integers(0, len(per_seed[i]), len(per_seed[i]))].mean()
                            for i in picks])
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return mean, float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """The comparison table and where it was written."""

    rows: tuple[dict, ...]
    shifts: tuple[str, ...]
    winners: dict[str, str | None]
    run_dir: Path | None

    def table(self) -> str:
        width = 24
        lines = [f"{'method':<18}{'seeds':>6}  " + "".join(f"{s:<{width}}" for s in self.shifts)]
        for r in self.rows:
            cells = "".join(f"{_cell(r[s]):<{width}}" for s in self.shifts)
            tag = f"  INCOHERENT ({r['incoherent_seeds']}/{r['seeds']} seeds)" \
                if r["incoherent_seeds"] else ""
            lines.append(f"{r['method']:<18}{r['seeds']:>6}  {cells}{tag}")
        win = ", ".join(f"{s}: {w or 'none (leader incoherent or tied)'}"
                        for s, w in self.winners.items())
        return "\n".join(lines + [f"best coherent method per shift: {win}"])


def _cell(c: dict) -> str:
    if c is None:
        return "-"
    if np.isfinite(c["lo"]):
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"
    return f"{c['mean']:.3f}"


def seed_dirs(run: Path, seeds: int) -> list[Path]:
    return [run] + [run.parent / f"{run.name}-seed{k}" for k in range(1, seeds)]


def _ensure_seed(run: Path, path: Path, k: int, train_missing: bool, progress: bool) -> None:
    from reprlab.prefs.config import TrainConfig
    from reprlab.prefs.trainer import train

    if (path / "manifest.json").exists():
        return
    if not train_missing:
        raise StoreError(f"seed run {path} is missing; train it or drop --no-train")
    results = read_json(run / "results.json")
    cfg = dict(results["config"])
    cfg["lora_targets"] = tuple(cfg["lora_targets"])
    ref = results.get("reference", {})
    cache = str(Path(ref["cache_path"]).parent) if ref.get("cache_path") else "off"
    base = TrainConfig(**cfg)
    logger.info("training seed %d of %s into %s", base.seed + k, run, path)
    train(config=replace(base, seed=base.seed + k, out=str(path), progress=progress,
                         ref_cache=cache))


def _evaluation(path: Path, force: bool, kwargs: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from reprlab.prefs.evaluation import evaluate

    ev = path / "eval"
    if force or not (ev / "manifest.json").exists():
        evaluate(path, **kwargs)
    return read_json(ev / "results.json"), load_file(ev / "rows.safetensors")


def compare(runs: list[str | Path], *, seeds: int = 1, out: str | Path = "runs/prefs-compare",
            metric: str = "pref", train_missing: bool = True, reevaluate: bool = False,
            bootstrap: int = 1000, progress: bool = True, **eval_kwargs: Any) -> Comparison:
    """Compare methods (one run each, ``seeds`` seeds) across shifts; writes a run directory."""
    from reprlab.prefs.report import write_compare_report

    if not runs:
        raise ConfigError("give at least one run directory to compare")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if metric not in ("pref", "reward"):
        raise ConfigError(f"--metric must be pref or reward, got {metric!r}")
    eval_kwargs.setdefault("progress", progress)
    table, shifts, base = [], [], {}
    for run in map(Path, runs):
        if not (run / "manifest.json").exists():
            raise StoreError(f"{run} is not a finished `reprlab prefs train` run (no "
                             "manifest.json); train it first")
        evals = []
        for k, path in enumerate(seed_dirs(run, seeds)):
            _ensure_seed(run, path, k, train_missing, progress)
            evals.append(_evaluation(path, reevaluate, dict(eval_kwargs)))
        method = evals[0][0]["method"]
        splits = [r["split"] for r in evals[0][0]["rows"] if r["adapter"] == "on"]
        shifts.extend(s for s in splits if s not in shifts)
        row = {"method": method, "run": str(run), "seeds": seeds,
               "incoherent_seeds": sum(bool(e[0]["incoherent"]) for e in evals),
               "ppl_ratio_max": max(max(e[0]["ppl_ratio"].values()) for e in evals)}
        for s in splits:
            per_seed = [e[1][f"{s}|on|{metric}"].numpy().astype(float) for e in evals]
            mean, lo, hi = bootstrap_ci(per_seed, bootstrap)
            row[s] = {"mean": mean, "lo": lo, "hi": hi}
            if s not in base:
                b = evals[0][1][f"{s}|off|pref"].numpy().astype(float)
                base[s] = dict(zip(("mean", "lo", "hi"), bootstrap_ci([b], bootstrap),
                                   strict=True))
        table.append(row)
    for row in table:
        for s in shifts:
            row.setdefault(s, None)
    base_row = {"method": "base (adapter off)", "run": "", "seeds": 1, "incoherent_seeds": 0,
                "ppl_ratio_max": 1.0, **{s: base.get(s) for s in shifts}}
    winners: dict[str, str | None] = {}
    for s in shifts:
        scored = [r for r in table if r[s] is not None]
        if not scored:
            winners[s] = None
            continue
        top = max(scored, key=lambda r: r[s]["mean"])
        coherent = [r for r in scored if not r["incoherent_seeds"]]
        best = max(coherent, key=lambda r: r[s]["mean"]) if coherent else None
        if top["incoherent_seeds"] and best is not top:
            logger.warning("%s leads on %s but is incoherent; not called the winner",
                           top["method"], s)
        winners[s] = best["method"] if best is not None else None
    result = Comparison(tuple(table + [base_row]), tuple(shifts), winners, Path(out))
    write_compare_report(result, out, metric, seeds)
    return result
