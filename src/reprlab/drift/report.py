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
        fig, axes = plots.new_figure(11 if has_floor else 5.8, 4.6, ncols=2 if has_floor else 1)
        ax0 = axes[0] if has_floor else axes
        plots.heatmap(ax0, entry["matrix"], labels, labels,
                      cmap="viridis_r" if name == "cka" else "viridis", cbar_label=UNITS[name])
        ax0.set_title(f"{title_prefix}{UNITS[name]}")
        if has_floor:
            half = np.asarray(entry["half_matrix"], float)
            floor = np.asarray(entry["floor_matrix"], float)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = half / floor
            plots.heatmap(axes[1], ratio, labels, labels, cmap="magma",
                          cbar_label="half-sample distance / split-half floor")
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


def series_figures(run, res: dict, history: Sequence[dict] | None = None,
                   curve_points: dict | None = None) -> None:
    """Trajectories (with floor bands and change points), layer × checkpoint heatmaps,
    checkpoint × checkpoint matrices and training curves."""
    sites = list(res["sites"])
    labels = _labels(sites)
    measures = list(res["sites"][sites[0]]["consecutive"])
    for name in measures:
        fig, ax = plots.new_figure(8, 4.2)
        for k, site in enumerate(sites):
            e = res["sites"][site]["consecutive"][name]
            color = plots.PALETTE[k % len(plots.PALETTE)]
            plots.line_with_band(ax, e["steps"], e["drift"], label=labels[k], color=color,
                                 marker=".")
            if "floor" in e:
                lo = [f - s for f, s in zip(e["floor"], e["floor_sd"], strict=True)]
                hi = [f + s for f, s in zip(e["floor"], e["floor_sd"], strict=True)]
                ax.fill_between(e["steps"], lo, hi, color=color, alpha=0.22, lw=0)
                ax.plot(e["steps"], e["floor"], color=color, ls=":", lw=0.9)
            tr = res["sites"][site]["transition"].get(name)
            if tr:
                ax.axvline(tr["step"], color=color, ls="--", lw=1.0)
        drift = [v for s in sites for v in res["sites"][s]["consecutive"][name]["drift"]]
        if drift and min(drift) > 0 and max(drift) / min(drift) > 100:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(("1 − " if name == "cka" else "") + UNITS[name])
        ax.set_title(f"drift between consecutive checkpoints: {UNITS[name]}")
        ax.legend(ncol=min(4, len(sites)))
        run.figure(fig, f"drift_{name}.png", title=f"Consecutive-checkpoint drift ({name})",
                   caption="Each point compares a checkpoint with the previous one. Dotted with "
                           "shaded band: split-half noise floor (mean ± sd) for unpaired "
                           "distances; drift below it is indistinguishable from sampling noise. Dashed: "
                           "the strongest upward change point of each site's series.")
        # layer × checkpoint heatmap
        mat = np.asarray([res["sites"][s]["consecutive"][name]["drift"] for s in sites], float)
        steps = res["sites"][sites[0]]["consecutive"][name]["steps"]
        fig, ax = plots.new_figure(9, 0.5 * len(sites) + 2)
        show = np.log10(np.clip(mat, 1e-12, None)) if (mat > 0).all() else mat
        stride = max(1, math.ceil(len(steps) / 20))
        plots.heatmap(ax, show, [str(s) if i % stride == 0 else "" for i, s in enumerate(steps)],
                      labels, annotate=False,
                      cbar_label=("log10 " if (mat > 0).all() else "") + UNITS[name])
        ax.set_xlabel("step")
        ax.set_title(f"layer × checkpoint drift ({name})")
        run.figure(fig, f"layer_checkpoint_{name}.png", title=f"Layer × checkpoint ({name})",
                   caption="Drift from the previous checkpoint, per site and step.")
    for k, site in enumerate(sites[:4]):
        m = res["sites"][site]["matrix"]
        fig, ax = plots.new_figure(6, 5)
        ticks = [str(s) for s in m["steps"]]
        plots.heatmap(ax, m["values"], ticks, ticks, annotate=len(ticks) <= 10,
                      cmap="viridis_r" if m["measure"] == "cka" else "viridis",
                      cbar_label=UNITS[m["measure"]])
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
        for ax, group in ((axes[0], acc), (axes[1], loss)):
            for k in group:
                _mark(ax, (curve_points or {}).get(k, []))
            ax.set_xlabel("step")
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
                rows.append({"site": site, "measure": name, "step": tr["step"],
                             "before": tr["before"], "after": tr["after"],
                             "n_change_points": len(s["change_points"][name])})
    return rows
