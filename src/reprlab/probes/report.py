"""Console table, plots and the run directory of a probe sweep."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.probes.sweep import SweepResult

logger = logging.getLogger(__name__)


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def surface_line(result: SweepResult) -> str:
    """One sentence on the bag-of-words baseline (or why there is none)."""
    s = result.surface
    if s is None:
        return "bag-of-words baseline: none (the store holds no texts)"
    ci = ""
    if s.get("test_acc_lo") is not None:
        ci = f" [{s['test_acc_lo']:.3f}, {s['test_acc_hi']:.3f}]"
    return (f"bag-of-words baseline {s['test_acc']:.3f}{ci} (logistic on {s['features']} "
            "words, same rows, strength chosen on validation)")


def best_note(result: SweepResult) -> str:
    """The footnote on how "best" was chosen."""
    best = result.best
    return (f"* best: {best['site']} / {best['position']} / {best['family']}, chosen on "
            f"validation accuracy ({best['val_acc']:.3f}); its test accuracy "
            f"{best['test_acc']:.3f} played no part in the choice")


def console_table(result: SweepResult) -> str:
    """One block per position x family: a row per layer (accuracy with 95% CI, control,
    selectivity, the bag-of-words baseline and the accuracy beyond it, cosine of probe vs
    mean-difference direction)."""
    lines = []
    best = result.best
    for pos in result.config["positions"]:
        for fam in result.config["families"]:
            rows = result.table(family=fam, position=pos)
            if result.config.get("mode") == "cv":
                sizes = (f"{result.config['folds']}-fold cross-validation, all {rows[0]['n_test']} "
                         f"rows scored out of fold; per fold train {rows[0]['n_train']}, "
                         f"val {rows[0]['n_val']}")
            else:
                sizes = (f"train {rows[0]['n_train']}, val {rows[0]['n_val']}, "
                         f"test {rows[0]['n_test']}")
            lines.append(f"\n{fam} probe, position '{pos}' ({sizes}; majority baseline "
                         f"{rows[0]['majority_acc']:.3f})")
            head = (f"  {'site':<14}{'test acc [95% CI]':<25}{'control':>9}{'select.':>9}"
                    f"{'words':>8}{'beyond':>8}{'cos(probe,diff)':>17}")
            evals = result.config.get("evals") or []
            widths = {e: max(10, len(f"eval {e}") + 2) for e in evals}
            for e in evals:
                head += f"{'eval ' + e:>{widths[e]}}"
            lines.append(head)
            for r in rows:
                mark = " *" if (r["site"], r["position"], r["family"]) == (
                    best["site"], best["position"], best["family"]) else ""
                ci = f"{r['test_acc']:.3f}"
                if r["test_acc_lo"] is not None:
                    ci += f" [{r['test_acc_lo']:.3f}, {r['test_acc_hi']:.3f}]"
                line = (f"  {r['site']:<14}{ci:<25}{_f(r['control_acc']):>9}"
                        f"{_f(r['selectivity'], '{:+.3f}'):>9}{_f(r.get('surface_acc')):>8}"
                        f"{_f(r.get('beyond_surface'), '{:+.3f}'):>8}"
                        f"{_f(r['cos_probe_meandiff']):>17}")
                for e in evals:
                    line += f"{_f(r.get(f'eval_{e}_acc')):>{widths[e]}}"
                lines.append(line + mark)
    lines.append(f"\n{best_note(result)}.")
    lines.append("control: the same probe on random labels; select. = test acc - control; "
                 f"words: the {surface_line(result)};")
    lines.append("beyond = test acc - max(words, majority baseline): what the layer holds "
                 "beyond the words.")
    return "\n".join(lines)


def plot_accuracy(result: SweepResult, title: str = "") -> Any:
    """Accuracy vs layer per position: families with 95% CI bands, controls dashed, chance
    line, best layer starred."""
    from reprlab.report.plots import PALETTE, layer_labels, line_with_band, new_figure

    positions = result.config["positions"]
    fig, axes = new_figure(width=max(5.0, 4.6 * len(positions)), height=3.8, ncols=len(positions),
                           squeeze=False, sharey=True)
    best = result.best
    sites = result.config["sites"]
    x = list(range(len(sites)))
    for ax, pos in zip(axes[0], positions):
        for i, fam in enumerate(result.config["families"]):
            rows = result.table(family=fam, position=pos)
            color = PALETTE[i % len(PALETTE)]
            has_ci = rows[0]["test_acc_lo"] is not None
            line_with_band(ax, x, [r["test_acc"] for r in rows],
                           [r["test_acc_lo"] for r in rows] if has_ci else None,
                           [r["test_acc_hi"] for r in rows] if has_ci else None,
                           label=f"{fam}", color=color)
            if rows[0]["control_acc"] is not None:
                ax.plot(x, [r["control_acc"] for r in rows], ls="--", lw=1.1, color=color,
                        alpha=0.7, label=f"{fam} control")
            if best["position"] == pos and best["family"] == fam:
                bi = sites.index(best["site"])
                ax.plot([bi], [best["test_acc"]], marker="*", ms=14, color=color, ls="none",
                        label=f"best ({best['site']})", zorder=5)
        chance = result.rows[0]["chance"]
        ax.axhline(chance, color="#4b5563", lw=1, ls=":", label="chance")
        if result.surface is not None:
            ax.axhline(result.surface["test_acc"], color="#9333ea", lw=1, ls="-.",
                       label="bag of words")
        ax.set_xticks(x, layer_labels(sites))
        ax.set_xlabel("site")
        ax.set_title(f"position: {pos}")
    axes[0][0].set_ylabel("test accuracy (95% CI)")
    # one legend under the panels (inside, it would cover the control lines near chance)
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="upper center", fontsize=7.5, frameon=False,
               ncol=min(len(seen), 6), bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_curves(result: SweepResult) -> Any | None:
    """Loss and accuracy per iteration/epoch (train and test, task and control) at the best
    site and position, for every iterative family."""
    from reprlab.report.plots import new_figure

    best = result.best
    keys = [k for k in result.curves if k[0] == best["site"] and k[1] == best["position"]]
    if not keys:
        return None
    fig, axes = new_figure(width=9.0, height=3.2 * len(keys), ncols=2, nrows=len(keys),
                           squeeze=False)
    for row, key in zip(axes, keys):
        c = result.curves[key]
        for metric, ax in (("loss", row[0]), ("acc", row[1])):
            for split, style in (("train", "-"), ("eval", "--"), ("val", ":")):
                for tag, color in (("task", "#2563eb"), ("control", "#dc2626")):
                    name = f"{split}_{metric}_{tag}"
                    if name in c:
                        label = {"eval": "test"}.get(split, split) + f" ({tag})"
                        ax.plot(range(len(c[name])), c[name], ls=style, color=color, lw=1.3,
                                label=label)
            ax.set_xlabel("iteration" if key[2] == "logistic" else "epoch")
            ax.set_ylabel("log-loss" if metric == "loss" else "accuracy")
            ax.set_title(f"{key[2]} at {key[0]} / {key[1]}")
    # one legend under the panels: inside, it covers the control curves
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4,
               fontsize=7.5, frameon=False)
    return fig


def plot_directions(result: SweepResult) -> Any:
    """Cosine of the probe direction with the mean difference per layer, and of each with the
    same direction at the previous layer."""
    from reprlab.report.plots import layer_labels, new_figure

    positions = result.config["positions"]
    fig, axes = new_figure(width=max(5.0, 4.6 * len(positions)), height=3.6, ncols=len(positions),
                           squeeze=False, sharey=True)
    sites = result.config["sites"]
    x = list(range(len(sites)))
    for ax, pos in zip(axes[0], positions):
        first_md = True
        for fam in result.config["families"]:
            rows = result.table(family=fam, position=pos)
            if rows[0]["cos_probe_meandiff"] is None or fam.startswith("mass-mean") and not fam.endswith("iid"):
                continue
            ax.plot(x, [r["cos_probe_meandiff"] for r in rows], marker="o", ms=3.5,
                    label=f"{fam} vs mean difference")
            ax.plot(x[1:], [r["cos_probe_prev"] for r in rows[1:]], marker="s", ms=3, ls="--",
                    label=f"{fam}: layer vs previous")
            if first_md:
                ax.plot(x[1:], [r["cos_meandiff_prev"] for r in rows[1:]], marker="^", ms=3,
                        ls=":", color="#4b5563", label="mean difference: layer vs previous")
                first_md = False
        ax.axhline(0, color="#9ca3af", lw=0.8)
        ax.set_xticks(x, layer_labels(sites))
        ax.set_title(f"position: {pos}")
        ax.set_xlabel("site")
    axes[0][0].set_ylabel("cosine (raw activation space)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    return fig


def _csv_rows(result: SweepResult) -> list[dict[str, Any]]:
    out = []
    for r in result.rows:
        row = {k: (";".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v)
               for k, v in r.items() if k != "hyper"}
        for hk, hv in (r.get("hyper") or {}).items():
            row[f"hyper_{hk}"] = hv
        out.append(row)
    return out


def write_run(result: SweepResult, out: str | Path, *, inputs: dict[str, Any] | None = None,
              config: dict[str, Any] | None = None, title: str = "",
              extra: Callable[[Any], dict[str, Any]] | None = None) -> Path:
    """Write the run directory (results.json, layers.csv, predictions.csv, probes/, PNGs,
    report.html, manifest.json) and return its path. ``extra(run)`` may add sections to the
    report before it is finished; the dict it returns is merged into ``results.json``."""
    from reprlab.report import RunDir

    run = RunDir.create(out, workflow="probe", config={**result.config, **(config or {})},
                        inputs=inputs or {}, seed=result.config.get("seed"))
    best = result.best
    table_rows = [{"site": r["site"] + (" *" if (r["site"], r["position"], r["family"]) == (
                       best["site"], best["position"], best["family"]) else ""),
                   "position": r["position"], "family": r["family"],
                   "test acc": _f(r["test_acc"]),
                   "95% CI": (f"{r['test_acc_lo']:.3f}–{r['test_acc_hi']:.3f}"
                              if r["test_acc_lo"] is not None else "–"),
                   "AUROC": _f(r["test_auroc"]), "control acc": _f(r["control_acc"]),
                   "selectivity": _f(r["selectivity"], "{:+.3f}"),
                   "words acc": _f(r.get("surface_acc")),
                   "beyond words": _f(r.get("beyond_surface"), "{:+.3f}"),
                   "val acc": _f(r["val_acc"]),
                   "cos(probe, mean diff)": _f(r["cos_probe_meandiff"])}
                  for r in result.rows]
    ci = ""
    if best["row"]["test_acc_lo"] is not None:
        ci = f" (95% CI {best['row']['test_acc_lo']:.3f}-{best['row']['test_acc_hi']:.3f})"
    words = ("" if result.surface is None else
             f", bag-of-words baseline {result.surface['test_acc']:.3f} (beyond it "
             f"{_f(best['row'].get('beyond_surface'), '{:+.3f}')})")
    summary = (f"Best (chosen on validation accuracy {best['val_acc']:.3f}): {best['site']} / "
               f"{best['position']} / {best['family']} with test accuracy "
               f"{best['test_acc']:.3f}{ci}; control {_f(best['row']['control_acc'])}, "
               f"selectivity {_f(best['row']['selectivity'], '{:+.3f}')}{words}, majority "
               f"baseline {best['row']['majority_acc']:.3f}.")
    n_ctl = int(result.config.get("controls") or 0)
    ctl = (f"mean of {n_ctl} random-label controls" if n_ctl > 1 else "random-label control")
    run.figure(plot_accuracy(result, title), "accuracy.png", title="Accuracy by layer",
               caption=f"Test accuracy with 95% bootstrap intervals; dashed: {ctl} (same "
                       "family and budget); dash-dot: bag-of-words baseline (same rows); "
                       "dotted: chance; star: best site (chosen on validation accuracy).")
    run.table("Per-layer results", table_rows,
              note=f"{best_note(result)}. selectivity = test accuracy − control accuracy "
                   "(Hewitt & Liang 2019); words acc: the " + surface_line(result) + "; "
                   "beyond words = test accuracy − the larger of words acc and the majority "
                   "baseline, what the layer holds beyond the words (on sets balanced so "
                   "that no word predicts the label the words score at or below chance); cos(probe, mean diff): cosine between the probe's "
                   "raw-space direction and the difference of class means. All numbers to "
                   "three decimals; layers.csv has them in full.")
    fig = plot_curves(result)
    if fig is not None:
        run.figure(fig, "curves.png", title="Training curves",
                   caption=f"At the best site ({best['site']}, {best['position']}).")
    run.figure(plot_directions(result), "directions.png", title="Directions",
               caption="Cosines in raw activation space: probe vs mean difference, and each "
                       "direction vs the same direction at the previous site.")
    run.write_csv("layers.csv", _csv_rows(result))
    run.write_csv("predictions.csv", result.predictions)
    for (site, pos, fam), probe in result.probes.items():
        stem = f"probes/{site}__{pos.replace(':', '_')}__{fam}"
        probe.save(run.path / stem)
        run.files.extend([stem + ".safetensors", stem + ".json"])
    results = result.to_dict()
    if extra is not None:
        results.update(extra(run))
    lead = results.pop("headline", None)  # e.g. the causal result of --validate, first
    summary = f"{lead} {summary}" if lead else summary
    results["summary"] = summary
    path = run.finish(results, title=title or "reprlab probe", summary=summary)
    logger.info("probe report: %s", path)
    return run.path
