"""Figures and tables of the drift workflows (added to a :class:`reprlab.report.RunDir`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reprlab.report import plots

UNITS = {"sinkhorn": "debiased Sinkhorn divergence", "emd": "exact W2²", "sliced": "sliced W2²",
         "bures": "Gaussian (Bures) W2²", "cka": "linear CKA",
         "procrustes": "Procrustes distance", "displacement": "mean paired displacement"}


def _labels(sites: Sequence[str]) -> list[str]:
    return plots.layer_labels(list(sites))


def layer_heatmaps(run, res: dict, title_prefix: str = "") -> None:
    """One heatmap per measure (value), plus distance / noise floor for unpaired distances."""
    labels = _labels(res["labels"])
    for name, entry in res["measures"].items():
        has_floor = "floor_matrix" in entry
        fig, axes = plots.new_figure(12 if has_floor else 6.2, 5.0, ncols=2 if has_floor else 1,
                                     layout="constrained")
        ax0 = axes[0] if has_floor else axes
        plots.heatmap(ax0, entry["matrix"], labels, labels,
                      cmap="viridis_r" if name == "cka" else "viridis", cbar_label=UNITS[name],
                      xlabel="site", ylabel="site")
        ax0.set_title(f"{title_prefix}{UNITS[name]}")
        if has_floor:
            half = np.asarray(entry["half_matrix"], float)
            floor = np.asarray(entry["floor_matrix"], float)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = half / floor
            plots.heatmap(axes[1], ratio, labels, labels, cmap="magma",
                          cbar_label="half-sample distance / split-half floor",
                          xlabel="site", ylabel="site")
            axes[1].set_title("distance over noise floor (1 = indistinguishable)")
        cap = (f"Layer × layer {UNITS[name]}."
               + (" Right: the same pairs on disjoint input halves divided by the split-half "
                  "noise floor of the two clouds." if has_floor else ""))
        if "eps" in entry:
            cap += f" ε = {entry['eps']:.4g} for every pair."
        run.figure(fig, f"layers_{name}.png", caption=cap, title=f"{UNITS[name]} between layers")


def _mark(ax, points: Sequence[dict], color: str = "0.3") -> None:
    for p in points:
        ax.axvline(p["step"], color=color, ls="--", lw=0.9, alpha=0.7)


def _trajectories(run, res: dict, sites: list[str], labels: list[str], name: str) -> None:
    """One panel per site (small multiples): drift between consecutive checkpoints with that
    site's own split-half noise floor, so that floors of different sites never merge."""
    ncols = min(3, len(sites))
    nrows = math.ceil(len(sites) / ncols)
    fig, axes = plots.new_figure(4.0 * ncols, 2.8 * nrows + 0.4, ncols=ncols, nrows=nrows,
                                 squeeze=False, sharex=True, layout="constrained")
    drift = [v for s in sites for v in res["sites"][s]["consecutive"][name]["drift"]]
    log = bool(drift) and min(drift) > 0 and max(drift) / min(drift) > 100
    # a floor of ~0 (identical clouds at init) must not stretch a log axis down to 1e-300
    bottom = min(drift) / 10 if log else None
    ylab = ("1 − " if name == "cka" else "") + UNITS[name]
    has_floor = any("floor" in res["sites"][s]["consecutive"][name] for s in sites)
    for k, site in enumerate(sites):
        ax = axes[k // ncols][k % ncols]
        e = res["sites"][site]["consecutive"][name]
        color = plots.PALETTE[k % len(plots.PALETTE)]
        plots.line_with_band(ax, e["steps"], e["drift"], label="drift", color=color, marker=".")
        if "floor" in e:
            clip = (lambda v: max(v, bottom)) if log else (lambda v: v)
            lo = [clip(f - s) for f, s in zip(e["floor"], e["floor_sd"], strict=True)]
            hi = [clip(f + s) for f, s in zip(e["floor"], e["floor_sd"], strict=True)]
            ax.fill_between(e["steps"], lo, hi, color="0.55", alpha=0.3, lw=0,
                            label="noise floor ± sd")
            ax.plot(e["steps"], [clip(f) for f in e["floor"]], color="0.35", ls=":", lw=1.0)
        tr = res["sites"][site]["transition"].get(name)
        if tr:
            ax.axvline(tr["step"], color="0.2", ls="--", lw=1.0, label="strongest change")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=bottom)
        ax.set_title(site)
        if k // ncols == nrows - 1 or k + ncols >= len(sites):
            ax.set_xlabel("step")
        if k % ncols == 0:
            ax.set_ylabel(ylab)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    for k in range(len(sites), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(f"drift between consecutive checkpoints: {UNITS[name]}", fontweight="bold")
    run.figure(fig, f"drift_{name}.png", title=f"Consecutive-checkpoint drift ({name})",
               caption=_trajectory_caption(name, has_floor, log))


def _trajectory_caption(name: str, has_floor: bool, log: bool) -> str:
    what = ("1 − CKA between the two checkpoints' activations (paired rows: 0 = same geometry)"
            if name == "cka" else UNITS[name])
    cap = (f"One panel per site. Each point compares a checkpoint with the previous one: "
           f"{what}.")
    if has_floor:
        cap += (" Grey band with dotted line: that site's split-half noise floor (mean ± sd); "
                "drift inside it is indistinguishable from sampling noise.")
        if log:
            cap += " Floors below the axis (near 0) are drawn at its bottom."
    else:
        cap += " This measure pairs the same rows at both checkpoints and has no noise floor."
    return cap + " Dashed: the strongest upward change point of the site's series."


def series_figures(run, res: dict, history: Sequence[dict] | None = None,
                   curve_points: dict | None = None) -> None:
    """Trajectories (with floor bands and change points), layer × checkpoint heatmaps,
    checkpoint × checkpoint matrices and training curves."""
    sites = list(res["sites"])
    labels = _labels(sites)
    measures = list(res["sites"][sites[0]]["consecutive"])
    for name in measures:
        _trajectories(run, res, sites, labels, name)
        # layer × checkpoint heatmap
        mat = np.asarray([res["sites"][s]["consecutive"][name]["drift"] for s in sites], float)
        steps = res["sites"][sites[0]]["consecutive"][name]["steps"]
        fig, ax = plots.new_figure(9, 0.5 * len(sites) + 2)
        show = np.log10(np.clip(mat, 1e-12, None)) if (mat > 0).all() else mat
        stride = max(1, math.ceil(len(steps) / 20))
        plots.heatmap(ax, show, [str(s) if i % stride == 0 else "" for i, s in enumerate(steps)],
                      labels, annotate=False,
                      cbar_label=("log10 " if (mat > 0).all() else "")
                      + ("1 − " if name == "cka" else "") + UNITS[name],
                      xlabel="step (compared with the previous checkpoint)", ylabel="site")
        ax.set_title(f"layer × checkpoint drift ({name})")
        run.figure(fig, f"layer_checkpoint_{name}.png", title=f"Layer × checkpoint ({name})",
                   caption="Drift from the previous checkpoint, per site and step.")
    for k, site in enumerate(sites[:4]):
        m = res["sites"][site]["matrix"]
        fig, ax = plots.new_figure(6, 5)
        ticks = [str(s) for s in m["steps"]]
        plots.heatmap(ax, m["values"], ticks, ticks, annotate=len(ticks) <= 10,
                      cmap="viridis_r" if m["measure"] == "cka" else "viridis",
                      cbar_label=UNITS[m["measure"]], xlabel="checkpoint step",
                      ylabel="checkpoint step")
        ax.set_title(f"{labels[k]}: checkpoint × checkpoint")
        run.figure(fig, f"checkpoints_{site}.png", title=f"Checkpoint × checkpoint, {site}",
                   caption=f"{UNITS[m['measure']]} between checkpoints (a subsample of steps).")
    if history:
        keys = [k for k in history[0] if k != "step" and isinstance(history[0][k], (int, float))]
        acc = [k for k in keys if k.endswith("acc")]
        loss = [k for k in keys if "loss" in k]
        fig, axes = plots.new_figure(11, 4, ncols=2)
        st = [m["step"] for m in history]
        for k in acc:
            axes[0].plot(st, [m[k] for m in history], label=k)
        for k in loss:
            axes[1].plot(st, [m[k] for m in history], label=k)
        if loss and all(m[k] > 0 for k in loss for m in history):
            axes[1].set_yscale("log")
        for ax, group, ylab in ((axes[0], acc, "accuracy"), (axes[1], loss, "loss")):
            for k in group:
                _mark(ax, (curve_points or {}).get(k, []))
            ax.set_xlabel("step")
            ax.set_ylabel(ylab + (" (log scale)" if ax.get_yscale() == "log" else ""))
            if group:
                ax.legend()
        axes[0].set_title("accuracy")
        axes[1].set_title("loss")
        run.figure(fig, "curves.png", title="Training curves",
                   caption="Dashed: change points of the curves (PELT, jump=1).")


def transitions_table(res: dict) -> list[dict]:
    rows = []
    for site, s in res["sites"].items():
        for name, tr in s["transition"].items():
            if tr:
                step = tr["step"]
                step = int(step) if float(step).is_integer() else step
                rows.append({"site": site, "measure": name, "step": step,
                             "before": tr["before"], "after": tr["after"],
                             "n_change_points": len(s["change_points"][name])})
                if "above_floor" in tr:
                    rows[-1]["above noise floor"] = "yes" if tr["above_floor"] else "no"
    return rows


def _ratio(row: dict) -> float | None:
    h, f = row.get("half"), row.get("floor")
    if h is None or f is None or not f > 0:
        return None
    return h / f


def pairs_table(res: dict) -> list[dict]:
    """One row per pair of sites, one column per measure (and distance ÷ noise floor for the
    unpaired distances): every pair, formatted for the page."""
    from reprlab.report.fmt import num

    table: dict[tuple[str, str], dict] = {}
    for r in res["rows"]:
        row = table.setdefault((r["a"], r["b"]), {"site a": r["a"], "site b": r["b"]})
        row[r["measure"]] = num(r["value"], 3)
        ratio = _ratio(r)
        if ratio is not None:
            row[f"{r['measure']} ÷ floor"] = num(ratio, 3)
        if not r.get("converged", True):
            row[r["measure"]] += " (not converged)"
    return list(table.values())


def layers_headline(res: dict) -> str:
    """The page's top line: which sites differ most and least, against the noise floor."""
    from reprlab.report.fmt import num

    rows = res["rows"]
    measures = list(res["measures"])
    unpaired = [m for m in measures if any(_ratio(r) is not None for r in rows
                                           if r["measure"] == m)]
    if unpaired:
        m = unpaired[0]
        rs = [r for r in rows if r["measure"] == m and _ratio(r) is not None]
        hi = max(rs, key=_ratio)
        lo = min(rs, key=_ratio)
        near = sum(1 for r in rs if _ratio(r) < 1.5)
        return (f"{UNITS[m][0].upper()}{UNITS[m][1:]}: {hi['a']} and {hi['b']} differ most "
                f"({num(hi['value'], 3)}, {num(_ratio(hi), 2)}× the split-half noise floor); "
                f"{lo['a']} and {lo['b']} least ({num(lo['value'], 3)}, "
                f"{num(_ratio(lo), 2)}×). {near} of {len(rs)} pairs are within 1.5× their "
                "floor.")
    m = measures[0]
    rs = [r for r in rows if r["measure"] == m]
    best = max(rs, key=lambda r: r["value"])
    worst = min(rs, key=lambda r: r["value"])
    return (f"{UNITS[m]} ranges from {num(worst['value'], 3)} ({worst['a']}–{worst['b']}) to "
            f"{num(best['value'], 3)} ({best['a']}–{best['b']}).")


RATIO_CAP = 100.0


def _times(ratio: float) -> str:
    """``2.5×``, or ``more than 100×`` where the floor is too close to zero for a ratio."""
    from reprlab.report.fmt import num

    return f"more than {num(RATIO_CAP, 3)}×" if ratio > RATIO_CAP else f"{num(ratio, 3)}×"


def _step(x: float):
    return int(x) if float(x).is_integer() else x


def series_headline(res: dict) -> str:
    """Top line of a checkpoint series: the largest consecutive drift (against its floor when
    there is one) and where the strongest change point falls."""
    from reprlab.report.fmt import num

    sites = res["sites"]
    first = next(iter(sites.values()))
    name = next(iter(first["consecutive"]))
    best = None
    for site, s in sites.items():
        e = s["consecutive"][name]
        for k in range(len(e["steps"])):
            ratio = (e["half"][k] / e["floor"][k]) if "floor" in e and e["floor"][k] > 0 else None
            # past RATIO_CAP the ratio measures how close to zero the floor is, not the drift
            key = (min(ratio, RATIO_CAP) if ratio is not None else 0.0, e["drift"][k])
            if best is None or key > best[0]:
                best = (key, site, k, ratio)
    _, site, k, ratio = best
    e = sites[site]["consecutive"][name]
    prev = res["steps"][res["steps"].index(e["steps"][k]) - 1]
    if ratio is not None:
        line = (f"Consecutive-checkpoint drift furthest above its noise floor ({UNITS[name]}): "
                f"{site} from step {prev} to {e['steps'][k]} ({num(e['drift'][k], 3)}, "
                f"{_times(ratio)} the floor).")
    else:
        line = (f"Largest drift between consecutive checkpoints ({UNITS[name]}"
                f"{', as 1 − CKA' if name == 'cka' else ''}): {site} from step {prev} to "
                f"{e['steps'][k]} ({num(e['drift'][k], 3)}).")
    found = [(s, t) for s, v in sites.items() if (t := v["transition"].get(name))]
    trs = [(s, t) for s, t in found if t.get("above_floor", True)]
    if found and not trs:
        s_low, t = max(found, key=lambda it: it[1]["after"])
        line += (f" The strongest upward change point (step {_step(t['step'])} at {s_low}) lies "
                 "within the split-half noise floor, so no change point is reported.")
    elif len(trs) < len(found):
        line += (f" {len(found) - len(trs)} of {len(found)} sites' change points lie within "
                 "their noise floor and are left out.")
    if trs:
        def jump(item):
            t = item[1]
            return t["after"] / t["before"] if t.get("before") else float("inf")

        s_best, t = max(trs, key=jump)
        step = int(t["step"]) if float(t["step"]).is_integer() else t["step"]
        at = sorted({int(x["step"]) if float(x["step"]).is_integer() else x["step"]
                     for _, x in trs})
        line = (f"Strongest upward change point of the drift: step {step} at {s_best} (mean "
                f"drift {num(t['before'], 3)} before, {num(t['after'], 3)} after; all sites: "
                f"step {', '.join(str(x) for x in at)}). " + line)
    return line
