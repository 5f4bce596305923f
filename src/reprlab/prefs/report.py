"""Plots, tables and the run directory of preference training, evaluation and comparison."""

from __future__ import annotations

from typing import Any

from reprlab.report.plots import PALETTE, new_figure

TRAIN_CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"),
                ("rewards/accuracies", "reward accuracy"), ("logps/chosen", "log-prob chosen"),
                ("logps/rejected", "log-prob rejected"), ("grad_norm", "grad norm"))


def train_figure(log: list[dict]) -> Any:
    fig, axes = new_figure(10, 5.5, ncols=3, nrows=2)
    steps = [r["step"] for r in log]
    for ax, (k, title) in zip(axes.ravel(), TRAIN_CURVES, strict=True):
        ys = [r.get(k) for r in log]
        if any(y is not None for y in ys):
            ax.plot(steps, [float("nan") if y is None else y for y in ys], lw=1.4)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def write_train_report(rundir: Any, result: Any, cfg: Any, identity: dict) -> None:
    log = result.log
    tps = [r["tokens_per_s"] for r in log if r.get("tokens_per_s")]
    results = {
        "workflow": "prefs-train", "method": result.method, "steps": result.steps,
        "resumed_from": result.resumed_from, "final": result.final,
        "tokens_per_s_median": sorted(tps)[len(tps) // 2] if tps else None,
        "truncation": result.truncation, "reference": result.reference,
        "config": result.config, "model": identity, "adapter": "adapter",
        "log": "train_log.jsonl", "checks": result.checks, "warnings": list(result.warnings),
        "validation": result.validation,
    }
    rundir.files += ["train_log.jsonl", "state.safetensors", "adapter/adapter_model.safetensors",
                     "adapter/adapter_config.json"]
    if log:
        rundir.figure(train_figure(log), "training.png", title="Training",
                      caption="loss, implicit-reward margin and accuracy, completion log-probs "
                              "and gradient norm per step")
    t = result.truncation
    for w in result.warnings:
        rundir.text("Warning", w)
    rundir.table("Data after tokenisation", [t], note="prompt cut from the left, completion "
                 "from the right; dropped rows are not trained on")
    rundir.table("Final step", [{k: v for k, v in result.final.items()}])
    v = result.validation
    if v:
        rundir.table("Validation", [{"split": k, **r} for k, r in v["splits"].items()],
                     note=f"score {v['score']:.3f}: mean preference accuracy of the splits not "
                          "named control, 0 when the run is incoherent (a chosen perplexity "
                          f"ratio above {v['threshold']:g}x on any split)")
    still = " " + still_line(result.checks) if result.checks.get("adapter_moved") is False else ""
    rundir.finish(results, title=f"reprlab prefs train: {result.method['name']}",
                  summary=f"{result.steps} steps of {result.method['name']} on "
                          f"{t['kept']}/{t['rows']} pairs.{still}")


def still_line(checks: dict) -> str:
    """One sentence for a run whose adapter left the base model's log-probs where they were."""
    from reprlab.report.fmt import num

    return (f"The adapter did not move: the completions' log-probs changed by "
            f"{num(checks.get('logp_change_nats'), 3)} nats from the base model over the last "
            "steps, so the adapter-on figures are the base model's.")


def shift_figure(rows: list[dict], metric: str = "pref_acc") -> Any:
    """Bar chart: accuracy per split, adapter on vs off; incoherent runs hatched."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, ax = new_figure(max(5.0, 1.3 * len(splits) + 2), 3.6)
    width = 0.38
    for j, adapter in enumerate(("off", "on")):
        vals = [next((r[metric] for r in rows if r["split"] == s and r["adapter"] == adapter),
                     float("nan")) for s in splits]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(splits))], vals, width,
                      label=f"adapter {adapter}" + (" (base)" if adapter == "off" else ""),
                      color=PALETTE[j])
        if adapter == "on" and any(r.get("incoherent") for r in rows):
            for b in bars:
                b.set_hatch("//")
    ax.axhline(0.5, color="#888", lw=0.8, ls="--")
    ax.set_xticks(range(len(splits)), splits, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("preference accuracy")
    ax.legend()
    return fig


def compare_figure(comparison: Any) -> Any:
    shifts = list(comparison.shifts)
    rows = list(comparison.rows)
    fig, ax = new_figure(max(5.0, 1.6 * len(shifts) + 2), 3.8)
    width = 0.8 / max(1, len(rows))
    for j, r in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(shifts))]
        means = [r[s]["mean"] if r[s] else float("nan") for s in shifts]
        err = [[(r[s]["mean"] - r[s]["lo"]) if r[s] else 0 for s in shifts],
               [(r[s]["hi"] - r[s]["mean"]) if r[s] else 0 for s in shifts]]
        label = r.get("label", r["method"]) + (" (INCOHERENT)" if r["incoherent_seeds"] else "")
        bars = ax.bar(xs, means, width, yerr=err, capsize=2, label=label,
                      color=PALETTE[j % len(PALETTE)])
        if r["incoherent_seeds"]:
            for b in bars:
                b.set_hatch("//")
                b.set_alpha(0.5)
    ax.axhline(0.5, color="#888", lw=0.8, ls="--")
    ax.set_xticks(range(len(shifts)), shifts, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy ({getattr(comparison, 'level', 0.95):.0%} interval)")
    ax.legend(fontsize=7.5)
    return fig


def difference_figure(comparison: Any) -> Any:
    """Per shift, each method's paired difference from the base and from the ``against``
    method, with intervals (a forest plot; 0 = no difference)."""
    shifts = list(comparison.shifts)
    labels = [r["label"] for r in comparison.rows if r["label"] != "base (adapter off)"]
    fig, axes = new_figure(3.2 * len(shifts) + 1.5, 0.45 * len(labels) + 1.6,
                           ncols=max(1, len(shifts)))
    axes = list(getattr(axes, "ravel", lambda: [axes])())
    series = [("base (adapter off)", "− base", PALETTE[0])]
    if comparison.against:
        series.append((comparison.against, f"− {comparison.against}", PALETTE[1]))
    for ax, s in zip(axes, shifts, strict=False):
        for j, (b, name, colour) in enumerate(series):
            for i, a in enumerate(labels):
                d = comparison.difference(s, a, b)
                if d is None:
                    continue
                y = i + (j - (len(series) - 1) / 2) * 0.25
                # a percentile interval need not hold the mean (a skewed or constant
                # difference); draw the bar from the interval's ends all the same
                err = [[max(0.0, d["mean"] - d["lo"])], [max(0.0, d["hi"] - d["mean"])]]
                ax.errorbar([d["mean"]], [y], xerr=err,
                            fmt="o", color=colour, capsize=2, ms=4,
                            label=name if i == 0 else None)
        ax.axvline(0.0, color="#888", lw=0.8, ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_title(s)
        ax.set_xlabel("paired difference in accuracy")
    handles, names = axes[0].get_legend_handles_labels()
    uniq = dict(zip(names, handles, strict=True))
    axes[0].legend(uniq.values(), uniq.keys(), fontsize=7.5)
    fig.tight_layout()
    return fig


def write_compare_report(comparison: Any, out: Any, metric: str, seeds: int) -> None:
    from reprlab.report import RunDir

    rd = RunDir.create(out, "prefs-compare", {"metric": metric, "seeds": seeds,
                                              "level": comparison.level,
                                              "against": comparison.against},
                       inputs={"runs": [r["run"] for r in comparison.rows if r["run"]]})
    flat = []
    for r in comparison.rows:
        row = {k: r[k] for k in ("label", "method", "seeds", "incoherent_seeds", "ppl_ratio_max")}
        for s in comparison.shifts:
            c = r[s]
            row.update({f"{s}": c["mean"] if c else None, f"{s}_lo": c["lo"] if c else None,
                        f"{s}_hi": c["hi"] if c else None})
        flat.append(row)
    diffs = [{k: d[k] for k in ("shift", "a", "b", "mean", "lo", "hi", "p")}
             for d in comparison.differences]
    rd.write_csv("compare.csv", flat)
    rd.write_csv("differences.csv", diffs)
    rd.figure(compare_figure(comparison), "compare.png", title="Methods across shifts",
              caption=f"mean over seeds, {comparison.level:.0%} paired-bootstrap interval over "
                      "rows and seeds; hatched: a seed failed the coherence guard")
    rd.figure(difference_figure(comparison), "differences.png",
              title="Paired differences per shift",
              caption="each method minus the base (adapter off) and minus "
                      f"{comparison.against or 'the first method'}, same rows, "
                      f"{comparison.level:.0%} interval; left of 0: worse")
    rd.table("Comparison", flat)
    rd.table("Paired differences (a − b)", diffs,
             note="two-sided bootstrap p-values, unadjusted for the number of comparisons")
    rd.text("Verdicts", "; ".join(f"{s}: {v}" for s, v in comparison.verdicts.items()))
    for note in comparison.notes:
        rd.text("Note", note)
    rd.finish({"workflow": "prefs-compare", "metric": metric, "seeds": seeds,
               "level": comparison.level, "against": comparison.against,
               "shifts": list(comparison.shifts), "rows": list(comparison.rows),
               "differences": diffs, "verdicts": comparison.verdicts,
               "winners": comparison.winners, "notes": list(comparison.notes)},
              title="reprlab prefs compare",
              summary="; ".join(f"{s}: {v}" for s, v in comparison.verdicts.items()))
