"""What a sweep found: progress and best trial (``status``), and a report with the trials
table, parameter importances, an optimisation-history and a parallel-coordinates plot."""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError
from reprlab.report.fmt import num
from reprlab.sweeps.spec import SweepSpec
from reprlab.sweeps.study import info

logger = logging.getLogger(__name__)

#: importance evaluator name -> factory (Optuna's default is PED-ANOVA)
def _evaluators() -> dict[str, Any]:
    from optuna import importance as imp

    return {"ped-anova": imp.PedAnovaImportanceEvaluator, "fanova": imp.FanovaImportanceEvaluator,
            "mdi": imp.MeanDecreaseImpurityImportanceEvaluator}


def load(sweep_dir: str | Path) -> tuple[Path, dict, SweepSpec, Any]:
    from reprlab.sweeps.study import open_study, read_meta

    d = Path(sweep_dir)
    meta = read_meta(d)
    return d, meta, SweepSpec.from_dict(meta["spec"]), open_study(d, meta)


def trial_rows(study: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("stale"):
            continue
        row = {"trial": t.number, "state": t.state.name.lower(), spec.metric: t.value}
        row.update({p.name: t.params.get(p.name) for p in spec.searched})
        row["steps"] = info(t).get("steps")
        row["seconds"] = info(t).get("seconds")
        row["capture"] = info(t).get("capture", "")
        row["run_dir"] = info(t).get("run_dir", "")
        rows.append(row)
    return rows


def best_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    return study.best_trial


def command_line(t: Any) -> str:
    return "reprlab " + " ".join(shlex.quote(a) for a in info(t).get("argv", []))


def status(sweep_dir: str | Path) -> dict[str, Any]:
    """Counts by state, the budget, the best trial (value, params, command line)."""
    from reprlab.sweeps.study import counted

    d, meta, spec, study = load(sweep_dir)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("stale"):
            continue
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    n, waiting = counted(study)
    best = best_trial(study)
    out: dict[str, Any] = {"sweep": str(d), "study": meta["study_name"], "method": spec.method,
                           "metric": spec.metric, "goal": spec.goal, "trials": spec.trials,
                           "counts": counts, "finished": sum(counts.get(s, 0) for s in
                                                             ("complete", "pruned", "fail")),
                           "left": max(0, spec.trials - n) + waiting
                           if spec.method != "grid" else waiting + counts.get("running", 0)}
    if best is not None:
        out["best"] = {"trial": best.number, "value": best.value, "params": dict(best.params),
                       "command": command_line(best),
                       "run_dir": info(best).get("run_dir", "")}
    return out


def status_text(s: dict[str, Any]) -> str:
    c = s["counts"]
    parts = [f"{c[k]} {k}" for k in ("complete", "pruned", "fail", "running", "waiting") if c.get(k)]
    lines = [f"sweep {s['sweep']} ({s['method']}, {s['goal']} {s['metric']}): "
             f"{s['finished']} of {s['trials']} trials finished"
             + (f" ({', '.join(parts)})" if parts else "")]
    if "best" in s:
        b = s["best"]
        params = ", ".join(f"{k}={v}" for k, v in b["params"].items())
        lines.append(f"best: trial {b['trial']} {s['metric']}={b['value']:.6g} ({params})")
        lines.append(f"      {b['command']}")
    if s["left"]:
        lines.append(f"{s['left']} trial(s) left; run `reprlab sweep {s['sweep']}` to resume")
    return "\n".join(lines)


def _val(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)   # a grid value reads as written


def _in_sweep(text: str, d: Path) -> str:
    """``text`` with the sweep folder's absolute path dropped (``trials/3``, not ``/home/...``)."""
    for root in {str(Path(d).resolve()), str(Path(d).absolute())}:
        text = text.replace(root + "/", "").replace(root, ".")
    return text


def page_summary(s: dict[str, Any]) -> str:
    """The report page's top lines: how far the sweep got and its best trial, in words."""
    c = s["counts"]
    parts = [f"{c[k]} {k}" for k in ("complete", "pruned", "fail", "running", "waiting") if c.get(k)]
    line = (f"{s['method'].capitalize()} search to {s['goal']} {s['metric']}: {s['finished']} of "
            f"{s['trials']} trials finished" + (f" ({', '.join(parts)})." if parts else "."))
    if "best" in s:
        b = s["best"]
        params = ", ".join(f"{k} = {_val(v)}" for k, v in b["params"].items())
        line += f" Best: trial {b['trial']}, {s['metric']} = {num(b['value'], 4)} at {params}."
    if s["left"]:
        line += f" {s['left']} trial(s) left: run `reprlab sweep` on this folder to resume."
    return line


def importances(study: Any, evaluator: str = "ped-anova") -> tuple[dict[str, float], str]:
    """Parameter importances (and a note when they cannot be computed)."""
    import optuna

    evals = _evaluators()
    if evaluator not in evals:
        raise ConfigError(f"unknown importance evaluator {evaluator!r}; use {', '.join(evals)}")
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}, "needs at least 2 complete trials"
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evals[evaluator]())), ""
    except (RuntimeError, ValueError, ImportError, ZeroDivisionError) as exc:
        return {}, str(exc).splitlines()[0]


def plot_history(study: Any, spec: SweepSpec) -> Any:
    from reprlab.report.plots import PALETTE, new_figure

    fig, ax = new_figure(6.4, 3.6)
    pts = [(t.number, t.value) for t in study.get_trials(deepcopy=False)
           if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [(t.number, t.value) for t in study.get_trials(deepcopy=False)
              if t.state.name == "PRUNED" and t.value is not None]
    if pts:
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=16, color=PALETTE[0], label="trial", zorder=3)
        best, run = [], None
        for y in ys:
            run = y if run is None else (max(run, y) if spec.goal == "maximize" else min(run, y))
            best.append(run)
        ax.step(xs, best, where="post", color=PALETTE[1], lw=1.6, label="best so far")
    if pruned:
        xs, ys = zip(*pruned)
        ax.scatter(xs, ys, s=14, marker="x", color=PALETTE[6], label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(spec.metric)
    ax.set_title("Optimisation history")
    ax.legend()
    return fig


def plot_parallel(study: Any, spec: SweepSpec) -> Any:
    """One vertical axis per parameter (log axes for log parameters, categories by index),
    one line per complete trial coloured by the objective."""
    import matplotlib.pyplot as plt

    from reprlab.report.plots import new_figure

    params = spec.searched
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.value is not None]
    fig, ax = new_figure(max(5.0, 1.6 * (len(params) + 1)), 3.8)
    if not done:
        ax.set_title("Parallel coordinates (no complete trial yet)")
        return fig
    cols = []
    for p in params:
        vals = [t.params.get(p.name) for t in done]
        if p.kind == "categorical":
            order = list(p.values)
            idx = [order.index(v) if v in order else 0 for v in vals]
            span = max(1, len(order) - 1)
            cols.append(([i / span for i in idx], [str(v) for v in order]))
        else:
            f = (lambda v: math.log10(v)) if p.log else (lambda v: float(v))
            lo, hi = f(p.low), f(p.high)
            cols.append(([(f(v) - lo) / ((hi - lo) or 1) for v in vals],
                         [f"{p.low:g}", f"{p.high:g}"]))
    ys = [t.value for t in done]
    lo, hi = min(ys), max(ys)
    cols.append(([(y - lo) / ((hi - lo) or 1) for y in ys], [f"{lo:.4g}", f"{hi:.4g}"]))
    cmap = plt.get_cmap("viridis" if spec.goal == "maximize" else "viridis_r")
    norm = [(y - lo) / ((hi - lo) or 1) for y in ys]
    for j in range(len(done)):
        ax.plot(range(len(cols)), [c[0][j] for c in cols], color=cmap(norm[j]), lw=1.2,
                alpha=0.8)
    names = [p.name for p in params] + [spec.metric]
    for i, (_, labels) in enumerate(cols):
        ax.axvline(i, color="#9ca3af", lw=0.8)
        ticks = [k / max(1, len(labels) - 1) for k in range(len(labels))]
        for tk, lab in zip(ticks, labels):
            ax.annotate(lab, (i, tk), xytext=(3, 0), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(cols)), names)
    ax.set_yticks([])
    ax.set_title("Parallel coordinates (colour: objective)")
    return fig


def plot_importances(imp: dict[str, float], evaluator: str) -> Any:
    from reprlab.report.plots import PALETTE, new_figure

    fig, ax = new_figure(5.6, 0.5 + 0.45 * max(1, len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color=PALETTE[0])
    ax.set_xlabel(f"importance ({evaluator})")
    ax.set_title("Parameter importances")
    return fig


def write_report(sweep_dir: str | Path, evaluator: str = "ped-anova") -> Path:
    """``report.html`` (+ results.json, trials.csv, PNGs) in the sweep directory."""
    from reprlab.report import RunDir

    d, meta, spec, study = load(sweep_dir)
    s = status(d)
    rows = trial_rows(study, spec)
    imp, note = importances(study, evaluator)
    run = RunDir.create(d, "sweep", config=spec.to_dict(), settings={},  # sweep.json checks
                        inputs={"study": meta["study_name"], "storage": meta.get("storage")
                                or "study.db"})
    rows = [{**r, "run_dir": _in_sweep(r["run_dir"], d)} for r in rows]
    run.write_csv("trials.csv", rows)
    best = s.get("best")
    if best:
        params = "".join(f"<li><code>{_esc(k)}</code> = {_esc(_val(v))}</li>"
                         for k, v in best["params"].items())
        run.text("Best trial", f"<p>trial {best['trial']}: {_esc(spec.metric)} = "
                 f"{num(best['value'], 4)}</p><ul>{params}</ul>"
                 f"<pre>{_esc(_in_sweep(best['command'], d))}</pre>"
                 f"<p>run directory: <code>{_esc(_in_sweep(best['run_dir'], d))}</code> (in the "
                 "sweep folder)</p>", raw_html=True)
    run.figure(plot_history(study, spec), "history.png", title="Optimisation history",
               caption="each complete trial's objective and the best so far")
    run.figure(plot_parallel(study, spec), "parallel.png", title="Parallel coordinates",
               caption="one line per complete trial; log parameters on log axes")
    if imp:
        run.figure(plot_importances(imp, evaluator), "importances.png",
                   title="Parameter importances",
                   caption=f"evaluator: {_EVAL_NAMES[evaluator]} (optuna.importance)")
    run.table("Trials", rows, note=f"{s['finished']} of {spec.trials} finished")
    results = {"status": s, "importances": imp, "importance_evaluator": _EVAL_NAMES[evaluator],
               "importance_note": note, "trials": rows}
    summary = page_summary(s)
    failed = s["counts"].get("fail", 0)
    # a sweep with failed trials is written out but does not read as complete
    extra = {"complete": False, "trials_failed": failed} if failed else None
    named = f" '{spec.name}'" if spec.name != "sweep" else ""
    return run.finish(results, title=f"Sweep{named}: {spec.goal} {spec.metric}",
                      summary=summary, extra_manifest=extra)


_EVAL_NAMES = {"ped-anova": "PED-ANOVA", "fanova": "fANOVA", "mdi": "mean decrease impurity"}


def _esc(s: str) -> str:
    import html

    return html.escape(s)


__all__ = ["importances", "status", "status_text", "trial_rows", "write_report"]
