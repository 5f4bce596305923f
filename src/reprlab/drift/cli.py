"""``reprlab drift layers | checkpoints | train``."""

from __future__ import annotations

import argparse

from reprlab.cliutil import subcommand


def _print_layers(res: dict) -> None:
    for name, e in res["measures"].items():
        m = e["matrix"]
        print(f"{name}: {len(m)}x{len(m)} matrix" + ("" if e["converged"] else " (NOT converged)"))
    if res.get("headline"):
        print(res["headline"])
    for n in res.get("notes", []):
        print(f"note: {n}")
    for w in res.get("warnings", []):
        print(f"warning: {w}")


def _print_series(res: dict) -> None:
    if res.get("headline"):
        print(res["headline"])
    for t in res.get("transitions", []):
        print(f"{t['site']:>14s} {t['measure']:>13s}: strongest change at step {t['step']}")
    if "acc_crosses_50pct" in res:
        from reprlab.drift.workflow import crossing_phrase

        print(crossing_phrase(res["acc_crosses_50pct"]))
    for n in res.get("notes", []):
        print(f"note: {n}")
    for w in res.get("warnings", []):
        print(f"warning: {w}")


def _layers(c) -> int:
    from reprlab.drift.workflow import run_layers

    _print_layers(run_layers(c))
    print(f"report: {c.out}/report.html")
    return 0


def _checkpoints(c) -> int:
    from reprlab.drift.workflow import run_checkpoints

    _print_series(run_checkpoints(c))
    print(f"report: {c.out}/report.html")
    return 0


def _train(c) -> int:
    from reprlab.drift.workflow import run_train

    _print_series(run_train(c))
    print(f"report: {c.out}/report.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from reprlab.drift.workflow import CheckpointsConfig, LayersConfig, TrainConfig

    parser = sub.add_parser("drift", help="how representations move: layers, checkpoints, training",
                            description="Optimal-transport and paired drift between layers and "
                                        "checkpoints, with noise floors and change points.")
    inner = parser.add_subparsers(dest="drift_command", metavar="WHAT")
    subcommand(inner, "layers", LayersConfig, _layers, "layer × layer drift within one model")
    subcommand(inner, "checkpoints", CheckpointsConfig, _checkpoints,
               "drift across checkpoints (ordered by step)")
    subcommand(inner, "train", TrainConfig, _train,
               "train (causal LM or --task grokking) and track drift")
