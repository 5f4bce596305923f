"""Probe sweep from Python: where is "this statement is true" linearly readable in MiniLM?

Runs on the bundled MiniLM (offline) with a slice of the built-in cities set:

    python examples/probe_api.py            # about half a minute on 2 CPU cores

Two ways in: ``reprlab.probes.probe`` captures and sweeps in one call (as the CLI does);
``reprlab.probes.sweep`` works on a store you already captured.
"""

from __future__ import annotations

import os
import sys

from reprlab.capture import capture
from reprlab.probes import Probe, probe, sweep


def main(out: str = "runs/example-probe", rows: int = 300) -> dict:
    # 1. end to end: capture once, fit every layer x position x family, write a report
    result = probe(model="minilm", data="builtin:cities", sites="embed,layers.*",
                   positions=("mean",), probes=("logistic", "mass-mean"), limit=rows,
                   out=out, bootstrap=200, progress=False)
    best = result.best
    print(f"best: {best['site']} / {best['position']} / {best['family']} "
          f"test accuracy {best['test_acc']:.3f}; report in {result.run_dir}")
    for row in result.table(family="logistic"):
        print(f"  {row['site']:<9} acc {row['test_acc']:.3f} "
              f"[{row['test_acc_lo']:.3f}, {row['test_acc_hi']:.3f}] "
              f"control {row['control_acc']:.3f} cos(probe, mean diff) "
              f"{row['cos_probe_meandiff']:.2f}")

    # 2. a store you already have: sweep it with other families / options, no forward pass
    store = capture("minilm", "builtin:cities", sites="embed,layers.*", positions="mean",
                    out=os.path.join(out, "stores", "train-cities"), limit=rows, progress=False)
    again = sweep(store, probes=["mass-mean-iid"], options={}, bootstrap=0, progress=False)

    # 3. saved probes are plain files: load one and score new activations
    stem = os.path.join(result.run_dir, "probes", f"{best['site']}__{best['position']}__{best['family']}")
    loaded = Probe.load(stem)
    probs = loaded(store[best["site"], best["position"]][:3])
    print("first rows:", [f"{p:.2f}" for p in probs[:, 1].tolist()], "->", loaded.predict(
        store[best["site"], best["position"]][:3]))
    return {"best": best, "iid_rows": again.rows, "probs": probs}


if __name__ == "__main__":
    main(*sys.argv[1:2])
