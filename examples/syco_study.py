"""The seed-004 question on the sycophancy organism: does training on hidden states generalise
further out of distribution than DPO?

For each method, a grid sweep (`reprlab sweep`) chooses the learning rate, then one more
chooses α (the weight of the hidden-state term, where a method has one) at that rate, on the
validation set of toy-syco-prefs (training landmarks held back from preference training; a run that
breaks the SFT model's own comparisons scores 0), never on a shift. The chosen trial becomes
seed 0 and `reprlab prefs compare` trains the other seeds with the same settings, then scores
every method on every named shift against the base with paired intervals (rows drawn once for
every method and seed) and the difference from DPO. Stopped? Run it again: finished trials,
runs and evaluations are kept.

    python examples/syco_study.py                       # runs/syco-study, 5 seeds
    python examples/syco_study.py --out runs/s --seeds 3 --lrs 1e-4,3e-4 --methods dpo,rank
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

from reprlab.cli import main as reprlab
from reprlab.io import read_json

#: name -> prefs train options of each method in the study
METHODS = {
    "dpo": "--method dpo",
    "ipo": "--method ipo",
    "innerdpo-pars_ratio": "--method innerdpo --method-options align=pars_ratio",
    "innerdpo-para_signed": "--method innerdpo --method-options align=para_signed",
    "projgrad": "--method projgrad",
    "prefvec": "--method prefvec",
    "mse": "--method mse",
    "rank": "--method rank",
}
TUNE = "validation=builtin:toy-syco-prefs-validation,control=builtin:toy-syco-prefs-control"
#: methods with a weight α on a hidden-state term: (their options but --method-options, their
#: other method options, the default α); α is swept second, at the chosen learning rate
ALPHA = {
    "innerdpo-pars_ratio": ("--method innerdpo", "align=pars_ratio", 0.5),
    "innerdpo-para_signed": ("--method innerdpo", "align=para_signed", 0.5),
    "prefvec": ("--method prefvec", "", 1.0),
    "mse": ("--method mse", "", 1.0),
    "rank": ("--method rank", "", 0.25),
}
ALPHA_FACTORS = (1.0, 0.25, 4.0)


def tune(name: str, sweeps: Path, command: str, param: str, values: list, workers: int) -> dict:
    """A grid sweep of one option on the validation set; the best trial's status."""
    from reprlab.sweeps import run_sweep
    from reprlab.sweeps.executors import ExecOptions

    spec = sweeps / f"{name}.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(f"command: {command} --validate {TUNE}\n"
                    "method: grid\nmetric: {name: validation.score, goal: maximize}\n"
                    f"parameters:\n  {param}: {{values: [{', '.join(map(str, values))}]}}\n")
    got = run_sweep(spec, sweeps / name, options=ExecOptions(workers=workers, progress=False),
                    report=True)
    if "best" not in got:
        sys.exit(f"the {name} sweep finished no trial; see {sweeps / name}")
    return got["best"]


def choose(name: str, out: Path, lrs: list[float], workers: int, train: str) -> dict:
    """The learning rate, then (where the method has one) α at that rate: the best trial."""
    best = tune(name, out / "sweeps", f"prefs train {train} {METHODS[name]}", "lr", lrs,
                workers)
    if name in ALPHA:
        flags, other, alpha = ALPHA[name]
        opts = [",".join(x for x in (other, f"alpha={alpha * f:g}") if x) for f in ALPHA_FACTORS]
        second = tune(f"{name}-alpha", out / "sweeps",
                      f"prefs train {train} {flags} --lr {best['params']['lr']:g}",
                      "method_options", [f'"{o}"' for o in opts], workers)
        if second["value"] > best["value"]:  # a tie keeps the default α
            second["params"]["lr"] = best["params"]["lr"]
            best = second
    return best


def markdown(compare_dir: Path, chosen: dict) -> str:
    """The study's table: per shift the base, DPO's gain over it and every other method's
    difference from DPO, paired intervals (rows drawn once for every method and seed)."""
    res = read_json(compare_dir / "results.json")
    shifts = [s for s in res["shifts"] if s != "train"]
    diff = {(d["shift"], d["a"], d["b"]): d for d in res["differences"]}
    lines = ["| method (chosen on validation) | " + " | ".join(shifts) + " |",
             "|---" * (len(shifts) + 1) + "|"]

    def d_cell(d: dict | None) -> str:
        return "" if d is None else (f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] "
                                     f"p {d['p']:.2g}")
    for r in res["rows"]:
        name = r["label"]
        params = chosen.get(r["run"].rsplit("/", 1)[-1], {}).get("params", {})
        setting = ", ".join(f"{v}" for v in params.values())
        head = f"{name} ({setting})" if setting else name
        if r["incoherent_seeds"]:
            head += f" — incoherent {r['incoherent_seeds']}/{r['seeds']} seeds"
        cells = []
        for sh in shifts:
            c = r.get(sh)
            acc = "" if c is None else f"{c['mean']:.3f}"
            if name == res["against"]:
                acc += " (" + d_cell(diff.get((sh, name, "base (adapter off)"))) + " vs base)"
            elif name != "base (adapter off)":
                acc += " (" + d_cell(diff.get((sh, name, res["against"]))) + ")"
            cells.append(acc)
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/syco-study")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lrs", default="1e-4,2e-4,5e-4,1e-3,3e-3", help="learning rates each sweep tries")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workers", type=int, default=2, help="sweep trials at once")
    ap.add_argument("--model", default="toy-syco")
    ap.add_argument("--train-options", default="", help="more prefs train options, e.g. "
                    "'--steps 20 --limit 40' for a quick look")
    args = ap.parse_args(argv)
    out = Path(args.out)
    lrs = [float(x) for x in args.lrs.split(",")]
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    start = time.time()
    chosen = {}
    train = (f"--model {args.model} --data builtin:toy-syco-prefs --no-progress "
             f"{args.train_options}").strip()
    for name in names:
        best = choose(name, out, lrs, args.workers, train)
        chosen[name] = best
        run = out / "runs" / name
        trial = read_json(Path(best["run_dir"]) / "results.json")["config"]
        if (run / "manifest.json").exists() and \
                read_json(run / "results.json")["config"] != trial:  # chosen anew: retrain
            for old in [run, *run.parent.glob(f"{name}-seed*"), out / "compare"]:
                shutil.rmtree(old, ignore_errors=True)
        if not (run / "manifest.json").exists():  # the chosen trial is seed 0
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(best["run_dir"], run)
        extra = f", {best['params']['method_options']}" if "method_options" in best["params"] \
            else ""
        print(f"{name}: lr {best['params']['lr']:g}{extra} chosen on validation (score "
              f"{best['value']:.3f})", flush=True)
    rc = reprlab(["prefs", "compare", *[str(out / "runs" / n) for n in names],
                  "--seeds", str(args.seeds), "--against", "dpo" if "dpo" in names else names[0],
                  "--out", str(out / "compare"), "--no-progress"])
    if rc == 0:
        table = markdown(out / "compare", chosen)
        (out / "study.md").write_text(table)
        print(table)
    print("chosen: " + ", ".join(f"{n} {' '.join(map(str, b['params'].values()))}"
                                  for n, b in chosen.items()))
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
              resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    print(f"study: {(time.time() - start) / 60:.1f} min wall, {cpu / 60:.1f} CPU-minutes")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
