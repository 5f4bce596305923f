"""Several methods, several seeds: one row a method, one column a shift, with 95% intervals.

For each given run (one method), seeds ``RUN``, ``RUN-seed1`` … ``RUN-seed{N-1}`` are read, and
the missing ones are trained with the run's own settings, the next seeds and the same reference
cache (a cached reference is shared by every seed). Every seed is
evaluated (or its evaluation read). Intervals and paired differences come from
:class:`reprlab.prefs.stats.PairedBootstrap`: one row draw per resample, applied to every seed
of every method and to the base, seeds resampled per method. Per shift the table gives the
base row, each method's accuracy, its paired difference from the base and from the
``against`` method (default: the first run's), each with interval and p-value, and any
``pairs`` the user names. A method is named best on a shift only when its difference from
the base and from the runner-up are both significant at ``level``; otherwise the verdict says
so. Runs the coherence guard flags are marked and never named best. Every run must have been
scored on the same evaluation rows (same data, split and limit), or the comparison stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprlab.errors import ConfigError, StoreError
from reprlab.io import local_path, read_json
from reprlab.prefs.stats import Interval, PairedBootstrap

logger = logging.getLogger(__name__)


def bootstrap_ci(per_seed: list[np.ndarray], n_boot: int = 1000, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, lo, hi) over seeds and rows; every seed scored on the same rows (see
    :class:`PairedBootstrap`)."""
    if n_boot <= 0:
        return float(np.mean([a.mean() for a in per_seed])), float("nan"), float("nan")
    iv = PairedBootstrap(len(per_seed[0]), n_boot, seed).interval(np.stack(per_seed), 0)
    return iv.mean, iv.lo, iv.hi


BASE = "base (adapter off)"
NO_WINNER = "no method is distinguishable from base"


@dataclass(frozen=True)
class Comparison:
    """The comparison: per shift the base row, each method's accuracy, paired differences
    (``differences``: shift, a, b, mean, lo, hi, p), the verdict and the named winner."""

    rows: tuple[dict, ...]
    shifts: tuple[str, ...]
    winners: dict[str, str | None]
    run_dir: Path | None
    differences: tuple[dict, ...] = ()
    verdicts: dict[str, str] = field(default_factory=dict)
    level: float = 0.95
    against: str | None = None
    seeds: int = 1
    notes: tuple[str, ...] = ()

    def difference(self, shift: str, a: str, b: str = BASE) -> dict | None:
        return next((d for d in self.differences
                     if d["shift"] == shift and d["a"] == a and d["b"] == b), None)

    def table(self) -> str:
        pct = f"{self.level:.0%}"
        head = (f"{'method':<22}{'seeds':>5}  {'accuracy [' + pct + ']':<22}"
                f"{'- base [' + pct + ']':<26}{'p':>6}")
        if self.against:
            head += f"  {'- ' + self.against + ' [' + pct + ']':<26}{'p':>6}"
        lines = []
        for s in self.shifts:
            lines += [f"shift {s}", head]
            for r in self.rows:
                if r[s] is None:
                    continue
                line = f"{r['label']:<22}{r['seeds']:>5}  {_cell(r[s]):<22}"
                if r["label"] != BASE:
                    line += _diff(self.difference(s, r["label"]))
                    if self.against and r["label"] != self.against:
                        line += "  " + _diff(self.difference(s, r["label"], self.against))
                if r["incoherent_seeds"]:
                    line += f"  INCOHERENT ({r['incoherent_seeds']}/{r['seeds']} seeds)"
                lines.append(line.rstrip())
            extra = [d for d in self.differences if d["shift"] == s and d.get("named")]
            for d in extra:
                lines.append(f"{d['a'] + ' - ' + d['b']:<51}{_diff(d)}")
            lines.append(f"verdict: {self.verdicts.get(s, '')}")
        lines += list(self.notes)
        return "\n".join(lines)


def _cell(c: dict | None) -> str:
    if c is None:
        return "-"
    if np.isfinite(c["lo"]):
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"
    return f"{c['mean']:.3f}"


def _diff(d: dict | None) -> str:
    if d is None:
        return f"{'-':<26}{'':>6}"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]".ljust(26) + f"{d['p']:>6.3f}"


def verdict(shift: str, rows: list[dict], diffs: list[dict], level: float
            ) -> tuple[str | None, str]:
    """(winner or None, one line): the leading coherent method is named only when its paired
    difference from the base and from the runner-up are both positive and significant."""
    alpha = 1.0 - level
    scored = [r for r in rows if r["label"] != BASE and r[shift] is not None]
    coherent = sorted((r for r in scored if not r["incoherent_seeds"]),
                      key=lambda r: -r[shift]["mean"])
    top_all = max(scored, key=lambda r: r[shift]["mean"], default=None)
    if top_all is not None and top_all["incoherent_seeds"] and \
            (not coherent or coherent[0] is not top_all):
        logger.warning("%s leads on %s but is incoherent; not named best", top_all["label"],
                       shift)
    if not coherent:
        return None, "no coherent method"
    left = [r["label"] for r in scored if r["incoherent_seeds"]]
    among = f" [among coherent methods; left out: {', '.join(left)}]" if left else ""
    winner, line = _verdict(coherent, diffs, alpha)
    return winner, line + among


def _verdict(coherent: list[dict], diffs: list[dict], alpha: float) -> tuple[str | None, str]:
    """The verdict among the coherent methods, best first."""

    def beats(a: str, b: str) -> dict | None:
        d = next((d for d in diffs if d["a"] == a and d["b"] == b), None)
        if d is None:
            d = next((d for d in diffs if d["a"] == b and d["b"] == a), None)
            d = d and {**d, "mean": -d["mean"], "lo": -d["hi"], "hi": -d["lo"]}
        return d if d and d["mean"] > 0 and d["p"] < alpha else None

    above = [r["label"] for r in coherent if beats(r["label"], BASE)]
    if not above:
        return None, NO_WINNER + f" (paired p >= {alpha:g} for every method above it)"
    top = coherent[0]["label"]
    if top not in above:
        return None, (f"{', '.join(above)} above base, but the leader {top} is not: no best "
                      "method")
    d_base = beats(top, BASE)
    if len(coherent) == 1:
        return top, f"best: {top} (vs base {d_base['mean']:+.3f}, p={d_base['p']:.3g})"
    runner = coherent[1]["label"]
    d_run = beats(top, runner)
    if d_run is None:
        return None, (f"{top} beats base (p={d_base['p']:.3g}) but is not distinguishable "
                      f"from the runner-up {runner}: no best method")
    return top, (f"best: {top} (vs base {d_base['mean']:+.3f}, p={d_base['p']:.3g}; vs "
                 f"runner-up {runner} {d_run['mean']:+.3f}, p={d_run['p']:.3g})")


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
    # the recorded entry is portable ($REPRLAB_HOME/...): the seeds share its cache root here
    cache = str(Path(local_path(ref["cache_path"])).parent) if ref.get("cache_path") else "off"
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


def _labels(methods: list[str], runs: list[Path]) -> list[str]:
    """Method names, with the run's name added where two runs share a method."""
    return [m if methods.count(m) == 1 else f"{m} ({r.name})" for m, r in zip(methods, runs,
                                                                          strict=True)]


def _row_key(run: Path, ev: dict, split: str) -> tuple:
    row = next(r for r in ev["rows"] if r["split"] == split and r["adapter"] == "on")
    return row["n"], row.get("rows_digest")


def compare(runs: list[str | Path], *, seeds: int = 1, out: str | Path = "runs/prefs-compare",
            metric: str = "pref", train_missing: bool = True, reevaluate: bool = False,
            bootstrap: int = 2000, level: float = 0.95, against: str | None = None,
            pairs: list[tuple[str, str]] | None = None, progress: bool = True,
            **eval_kwargs: Any) -> Comparison:
    """Compare methods (one run each, ``seeds`` seeds) across shifts; writes a run directory.

    ``against``: the method every other is also compared with (default: the first run's);
    ``pairs``: further (a, b) method pairs whose paired difference a − b is reported.
    """
    from reprlab.prefs.report import write_compare_report

    if not runs:
        raise ConfigError("give at least one run directory to compare")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if metric not in ("pref", "reward"):
        raise ConfigError(f"--metric must be pref or reward, got {metric!r}")
    if bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1, got {bootstrap}")
    eval_kwargs.setdefault("progress", progress)
    paths = [Path(r) for r in runs]
    per_run = []
    for run in paths:
        if not (run / "manifest.json").exists():
            raise StoreError(f"{run} is not a finished `reprlab prefs train` run (no "
                             "manifest.json); train it first")
        evals = []
        for k, path in enumerate(seed_dirs(run, seeds)):
            _ensure_seed(run, path, k, train_missing, progress)
            evals.append(_evaluation(path, reevaluate, dict(eval_kwargs)))
        per_run.append(evals)
    labels = _labels([e[0][0]["method"] for e in per_run], paths)
    shifts: list[str] = []
    for evals in per_run:
        shifts += [r["split"] for r in evals[0][0]["rows"]
                   if r["adapter"] == "on" and r["split"] not in shifts]
    # every seed of every run scored on the same rows of each split, by the same base model
    first: dict[str, tuple[Path, tuple, np.ndarray]] = {}
    for run, evals in zip(paths, per_run, strict=True):
        for k, (ev, tensors) in enumerate(evals):
            where = seed_dirs(run, seeds)[k]
            for s in [r["split"] for r in ev["rows"] if r["adapter"] == "on"]:
                key, off = _row_key(where, ev, s), tensors[f"{s}|off|pref"].numpy()
                if s not in first:
                    first[s] = (where, key, off)
                elif first[s][1] != key:
                    raise ConfigError(
                        f"{where} and {first[s][0]} were scored on different evaluation rows "
                        f"of {s!r} (another dataset, split or --limit); evaluate every run on "
                        "the same data (compare --reevaluate with one --limit)")
                elif not np.array_equal(first[s][2], off):
                    raise ConfigError(
                        f"{where} and {first[s][0]} disagree on the base model's answers on "
                        f"{s!r}: they were trained from different base models; compare runs "
                        "of one base model")
    against = labels[0] if against is None else against
    if against not in labels:
        raise ConfigError(f"--against {against!r} is not one of the compared methods "
                          f"({', '.join(labels)})")
    for a, b in pairs or []:
        bad = [m for m in (a, b) if m not in labels]
        if bad:
            raise ConfigError(f"--pairs names {bad[0]!r}, which is not one of the compared "
                              f"methods ({', '.join(labels)})")
    table: list[dict] = []
    scores: dict[str, dict[str, np.ndarray]] = {}
    for label, run, evals in zip(labels, paths, per_run, strict=True):
        row = {"method": evals[0][0]["method"], "label": label, "run": str(run),
               "seeds": seeds, "incoherent_seeds": sum(bool(e[0]["incoherent"]) for e in evals),
               "ppl_ratio_max": max(max(e[0]["ppl_ratio"].values()) for e in evals)}
        for s in shifts:
            if f"{s}|on|{metric}" in evals[0][1]:
                scores.setdefault(s, {})[label] = np.stack(
                    [e[1][f"{s}|on|{metric}"].numpy().astype(float) for e in evals])
        table.append(row)
    base_row = {"method": BASE, "label": BASE, "run": "", "seeds": 1, "incoherent_seeds": 0,
                "ppl_ratio_max": 1.0}
    diffs: list[dict] = []
    winners: dict[str, str | None] = {}
    verdicts: dict[str, str] = {}
    keys = {lab: i + 1 for i, lab in enumerate(labels)} | {BASE: 0}
    for s in shifts:
        # the base row is the reference-free score with the adapter off, whatever the metric
        scores[s][BASE] = first[s][2][None, :].astype(float)
        boot = PairedBootstrap(scores[s][BASE].shape[1], bootstrap, 0, level)
        for r in table + [base_row]:
            m = scores[s].get(r["label"])
            r[s] = None if m is None else boot.interval(m, keys[r["label"]]).to_dict()
        wanted = [(lab, BASE) for lab in labels] + \
            [(lab, against) for lab in labels if lab != against] + list(pairs or [])
        done = set()
        for a, b in wanted:
            if (a, b) in done or a not in scores[s] or b not in scores[s]:
                continue
            done.add((a, b))
            iv: Interval = boot.difference(scores[s][a], keys[a], scores[s][b], keys[b])
            diffs.append({"shift": s, "a": a, "b": b, **iv.to_dict(),
                          "named": (a, b) in (pairs or []) and b != BASE and b != against})
        winners[s], verdicts[s] = verdict(s, table, [d for d in diffs if d["shift"] == s],
                                          level)
    notes = [f"intervals and p-values: paired bootstrap ({bootstrap} resamples, rows drawn once "
             "for every method and seed; two-sided, unadjusted for multiple comparisons)"]
    if seeds < 2:
        notes.append("1 seed: the intervals cover evaluation rows only, not seed-to-seed "
                      "variation; give --seeds 2 or more for a seed interval")
        logger.warning(notes[-1])
    result = Comparison(tuple(table + [base_row]), tuple(shifts), winners, Path(out),
                        tuple(diffs), verdicts, level, against if len(labels) > 1 else None,
                        seeds, tuple(notes))
    write_compare_report(result, out, metric, seeds)
    return result
