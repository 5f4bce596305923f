"""Shared matplotlib style and small helpers, so every workflow's plots look alike."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]


def apply_style() -> None:
    plt.rcParams.update({
        "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.25, "axes.titleweight": "bold",
        "axes.titlesize": 11, "axes.labelsize": 10, "legend.frameon": False,
        "legend.fontsize": 8.5, "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
        "font.size": 9.5,
    })


def new_figure(width: float = 7.0, height: float = 4.0, ncols: int = 1, nrows: int = 1,
               **kw: Any) -> tuple[Any, Any]:
    apply_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), **kw)


def line_with_band(ax: Any, x: Any, y: Any, lo: Any = None, hi: Any = None, label: str = "",
                   color: str | None = None, marker: str = "o", **kw: Any) -> Any:
    """A line with an optional shaded confidence band."""
    (line,) = ax.plot(x, y, marker=marker, ms=3.5, lw=1.6, label=label, color=color, **kw)
    if lo is not None and hi is not None:
        ax.fill_between(x, np.asarray(lo, float), np.asarray(hi, float), alpha=0.18,
                        color=line.get_color(), lw=0)
    return line


def _text_colour(rgba: Any) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def heatmap(ax: Any, matrix: Any, xlabels: Any, ylabels: Any, cmap: str = "viridis",
            annotate: bool | None = None, fmt: str | None = None, cbar_label: str = "",
            center: float | None = None, xlabel: str = "", ylabel: str = "") -> Any:
    """``matrix [rows, cols]`` as an image with tick labels, a colour bar and (for small
    matrices) each cell's value, written by :func:`reprlab.report.fmt.cell` (``fmt``: a
    format string instead) in black or white by the cell's brightness."""
    from reprlab.report.fmt import cell

    m = np.asarray(matrix, float)
    kw: dict[str, Any] = {}
    if center is not None:
        span = np.nanmax(np.abs(m - center)) or 1.0
        kw = {"vmin": center - span, "vmax": center + span}
    im = ax.imshow(m, cmap=cmap, aspect="auto", **kw)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right")
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.grid(False)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if annotate is None:
        annotate = m.size <= 150
    if annotate:
        finite = m[np.isfinite(m)]
        scale = float(np.abs(finite).max()) if finite.size else None
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    text = fmt.format(m[i, j]) if fmt else cell(m[i, j], scale)
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color=_text_colour(im.cmap(im.norm(m[i, j]))))
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if cbar_label:
        cb.set_label(cbar_label)
    return im


def layer_labels(sites: list[str]) -> list[str]:
    """Short tick labels: 'layers.3' -> 'L3', 'embed' -> 'emb'."""
    out = []
    for s in sites:
        if s.startswith("layers."):
            out.append("L" + s[len("layers."):])
        elif s == "embed":
            out.append("emb")
        else:
            out.append(s)
    return out
