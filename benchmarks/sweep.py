"""Sweep: a probe sweep on the bundled model with reprlab's shared capture against the usual
recipe, where every trial is its own `reprlab probe` process that captures its own
activations (what a W&B agent or a bash loop over SLURM jobs does), in one run.

(a) usual recipe: N subprocesses `reprlab probe ... --l2=V --out base/i` (own capture each)
(b) the same N runs in one process, each with its own --out (own capture, no process start)
(c) `reprlab sweep` (one process, grid over the same N values of --l2, one shared capture)

Per-trial overhead of the engine, from (c)'s study: the time between the first trial's start
and the last one's end that is not spent inside the trials, per trial, against the mean run
time of a trial.

    python benchmarks/sweep.py [--trials 16] [--limit 600] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXED = ["--data", "builtin:cities", "--probes", "logistic", "--positions", "mean",
         "--bootstrap", "0", "--no-controls", "--no-progress"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _values(n: int) -> list[float]:
    return [float(f"{10 ** (-4 + 5 * i / max(1, n - 1)):.3g}") for i in range(n)]


def usual_recipe(work: Path, values: list[float], limit: int, env: dict) -> None:
    for i, v in enumerate(values):
        subprocess.run([sys.executable, "-m", "reprlab.cli", "probe", *FIXED,
                        "--limit", str(limit), f"--l2={v}", "--out", str(work / f"base-{i}")],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def in_process_own_capture(work: Path, values: list[float], limit: int) -> None:
    import contextlib
    import io

    from reprlab.cli import main

    for i, v in enumerate(values):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["probe", *FIXED, "--limit", str(limit), f"--l2={v}",
                         "--out", str(work / f"own-{i}")]) == 0


def shared_sweep(work: Path, values: list[float], limit: int, env: dict) -> Path:
    spec = work / "sweep.yaml"
    spec.write_text(f"command: probe {' '.join(FIXED)} --limit {limit}\nmethod: grid\n"
                    "metric: {name: best.test_acc, goal: maximize}\n"
                    f"parameters:\n  l2: {{values: {values}}}\n")
    out = work / "sweep"
    subprocess.run([sys.executable, "-m", "reprlab.cli", "sweep", str(spec), "--out", str(out),
                    "--workers", "1", "--no-progress", "--no-report"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def engine_overhead(out: Path) -> dict[str, float]:
    from reprlab.sweeps.report import load
    from reprlab.sweeps.study import info

    trials = [t for t in load(out)[3].get_trials() if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    inside = sum(info(t)["seconds"] for t in trials)
    later = [info(t)["seconds"] for t in trials if info(t).get("capture") == "reused"]
    return {"per_trial_overhead_s": (span - inside) / len(trials),
            "mean_trial_s": inside / len(trials),
            "mean_cached_trial_s": statistics.mean(later) if later else float("nan"),
            "first_trial_s": info(min(trials, key=lambda t: t.number))["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--limit", type=int, default=600, help="rows of builtin:cities")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the rotation (a, b, c)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    values = _values(args.trials)
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}
    overheads = []
    for r in range(args.rounds):
        for key in ("a", "b", "c"):
            work = Path(tempfile.mkdtemp(prefix=f"reprlab-sweep-bench-{key}-"))
            t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
            if key == "a":
                usual_recipe(work, values, args.limit, env)
            elif key == "b":
                in_process_own_capture(work, values, args.limit)
            else:
                out = shared_sweep(work, values, args.limit, env)
                overheads.append(engine_overhead(out))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0 + _children_cpu() - k0
            times[key].append((wall, cpu))
            print(f"round {r + 1} ({key}) wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in times.items()}
    names = {"a": "(a) usual recipe: a process per trial, own capture",
             "b": "(b) one process, own capture per trial",
             "c": "(c) reprlab sweep, one shared capture"}
    print(f"\n{args.trials} trials, builtin:cities --limit {args.limit}, bundled MiniLM, "
          f"1 torch thread, load {os.getloadavg()}")
    print(f"{'':<52}{'wall s':>9}{'cpu s':>9}{'wall x':>9}{'cpu x':>9}")
    for k in ("a", "b", "c"):
        w, c = med[k]
        print(f"{names[k]:<52}{w:9.1f}{c:9.1f}{w / med['c'][0]:9.2f}{c / med['c'][1]:9.2f}")
    o = {k: statistics.median(x[k] for x in overheads) for k in overheads[0]}
    print(f"\nengine overhead per trial {o['per_trial_overhead_s'] * 1000:.0f} ms = "
          f"{100 * o['per_trial_overhead_s'] / o['mean_trial_s']:.1f}% of the mean trial "
          f"({o['mean_trial_s']:.2f} s; first trial with the capture {o['first_trial_s']:.2f} s,"
          f" cached trials {o['mean_cached_trial_s']:.2f} s: "
          f"{100 * o['per_trial_overhead_s'] / o['mean_cached_trial_s']:.1f}% of one; "
          "goal < 5%)")


if __name__ == "__main__":
    main()
