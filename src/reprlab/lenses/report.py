"""Plots and report blocks of the lens workflows (matplotlib via reprlab.report.plots)."""

from __future__ import annotations

from typing import Any

from reprlab.report.plots import layer_labels, line_with_band, new_figure


def tuned_figure(rows: list[dict[str, Any]], lenses: list[str]) -> Any:
    """KL to the final output, cross-entropy and entropy per layer, one line per lens."""
    fig, axes = new_figure(11.0, 3.4, ncols=3)
    x = list(range(len(rows)))
    labels = layer_labels([r["layer"] for r in rows])
    for ax, metric, title in zip(axes, ("kl", "ce", "entropy"),
                                 ("KL(final ‖ lens)", "cross-entropy", "entropy")):
        for name in lenses:
            line_with_band(ax, x, [r[f"{name}_{metric}_bits"] for r in rows], label=f"{name} lens")
        if metric == "ce":
            ax.axhline(rows[0]["model_ce_bits"], color="#4b5563", ls="--", lw=1, label="model")
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_title(title)
        ax.set_ylabel("bits per token")
    axes[0].legend()
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict[str, Any]]) -> Any:
    """Training curves of the talkative lens: each loss, batch FVE and the temperature."""
    fig, axes = new_figure(11.0, 3.4, ncols=3)
    steps = [h["step"] for h in history]
    for key in sorted({k for h in history for k in h if k.startswith("loss_")}):
        axes[0].plot(steps, [h.get(key, float("nan")) for h in history], label=key[5:], lw=1.3)
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_title("losses")
    axes[0].legend()
    axes[1].plot(steps, [h["fve_batch"] for h in history], lw=1.3)
    axes[1].set_title("FVE of the training batch")
    axes[1].set_ylim(bottom=max(-1.0, min(h["fve_batch"] for h in history)))
    if any("tau" in h for h in history):
        axes[2].plot(steps, [h.get("tau", float("nan")) for h in history], lw=1.3, label="τ")
    for key in sorted({k for h in history for k in h if k.startswith("w_")}):
        axes[2].plot(steps, [h[key] for h in history], lw=1.0, ls="--", label=key)
    axes[2].set_title("schedules")
    if axes[2].get_lines():
        axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def curve_figure(curves: list[dict[str, Any]], metrics: dict[str, Any]) -> Any:
    """Held-out FVE per epoch of the lens, its shuffled and its empty explanation, with the
    final baselines (current-token lookup, context echo, PCA) as horizontal lines."""
    fig, ax = new_figure(6.5, 3.6)
    x = [c["epoch"] for c in curves]
    for key, label in (("fve", "lens"), ("fve_shuffled", "shuffled tokens"),
                       ("fve_empty", "empty explanation")):
        ax.plot(x, [c[key] for c in curves], marker="o", lw=1.4, label=label)
    for key, label, style in (("fve_lookup", "current-token lookup", "--"),
                              ("fve_context_echo", "context echo", ":"),
                              ("fve_pca", "PCA (t components)", "-.")):
        if key in metrics:
            ax.axhline(metrics[key], color="#4b5563", ls=style, lw=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out FVE")
    ax.set_ylim(bottom=max(-1.0, min([0.0] + [c["fve_shuffled"] for c in curves])))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def console_tuned(rows: list[dict[str, Any]], lenses: list[str]) -> str:
    head = f"{'layer':<12}" + "".join(f"{n + ' KL':>12}{n + ' CE':>12}{n + ' H':>11}"
                                       for n in lenses)
    lines = ["bits per token; KL to the model's final output, CE of the next token, entropy",
             head]
    for r in rows:
        lines.append(f"{r['layer']:<12}" + "".join(
            f"{r[f'{n}_kl_bits']:>12.3f}{r[f'{n}_ce_bits']:>12.3f}{r[f'{n}_entropy_bits']:>11.3f}"
            for n in lenses))
    lines.append(f"model cross-entropy: {rows[0]['model_ce_bits']:.3f} bits per token")
    return "\n".join(lines)
