"""Drift: the layer × layer entropic-OT matrix, reprlab's batched Sinkhorn against POT.

Clouds: all-token activations of the bundled MiniLM (embeddings + 6 blocks, d = 384) on
``builtin:cities``, captured once with ``reprlab.capture`` and sampled with a fixed seed
(``--points`` tokens per cloud, the same tokens in every cloud). For every pair of the 7
clouds (21 pairs) both sides compute the entropic transport cost ⟨P, C⟩ with the squared
Euclidean cost, the same ε per pair (``--rel-eps`` × median of the pair's cost matrix), the
same stopping rule (L2 norm of the marginal violation below ``--tol``, POT's rule) and the
same iteration cap, on torch float32 tensors:

(a) POT: ``ot.dist`` + ``ot.sinkhorn2`` pair by pair (default method ``"sinkhorn"``; with
    ``--pot-log`` also ``"sinkhorn_log"``, the log-domain variant).
(b) reprlab: ``reprlab.drift.ot.sinkhorn`` on all pairs at once (batched cost matrices,
    log-domain stabilised iteration with over-relaxation).

Both sides run in rotation at one thread (both: torch and POT's NumPy/BLAS pools), then at
two threads and at the default (reprlab's thread policy, as the drift workflows apply it;
torch's own default for POT). Prints medians of CPU time and wall time with the load
average, the ratio, the largest relative difference of the 21 values and the iteration
counts.

    python benchmarks/drift.py                         # 1,000 points, rel_eps 0.1 and 0.05
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, rotate, table, threads  # noqa: E402


def load_clouds(points: int, seed: int, store_dir: str | None) -> tuple[torch.Tensor, list[str]]:
    from reprlab.capture import capture

    out = store_dir or tempfile.mkdtemp(prefix="reprlab-drift-bench-")
    store = capture("minilm", "builtin:cities", sites="embed,layers.*", positions=("all",),
                    out=out, progress=False)
    n_tok = store[store.sites[0], "all"].shape[0]
    idx = torch.randperm(n_tok, generator=torch.Generator().manual_seed(seed))[:points]
    return torch.stack([store[s, "all"][idx].float() for s in store.sites]), store.sites


def run_pot(clouds, pairs, eps, tol, max_iter, method):
    import ot

    n = clouds.shape[1]
    a = torch.full((n,), 1.0 / n)
    vals, iters = [], []
    for (i, j), e in zip(pairs, eps.tolist(), strict=True):
        m = ot.dist(clouds[i], clouds[j])
        v, log = ot.sinkhorn2(a, a, m, e, method=method, stopThr=tol, numItermax=max_iter,
                              log=True)
        vals.append(float(v))
        iters.append(int(log["niter"]) + 1)
    return torch.tensor(vals, dtype=torch.float64), iters


def run_reprlab(clouds, pairs, eps, tol, max_iter):
    from reprlab.drift.ot import sinkhorn

    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    r = sinkhorn(clouds[i], clouds[j], eps=eps, tol=tol, max_iter=max_iter, norm="l2")
    return r.cost.double(), r.n_iter.tolist(), r.converged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--rel-eps", type=float, nargs="+", default=[0.1, 0.05])
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-threads", type=int, default=1,
                    help="rounds at two threads / default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="reuse/keep the capture here")
    ap.add_argument("--pot-log", action="store_true", help="also time POT's sinkhorn_log")
    args = ap.parse_args(argv)
    from reprlab import _threads
    from reprlab.drift.ot import sq_cost

    print(machine())
    with threads(1):
        clouds, sites = load_clouds(args.points, args.seed, args.store)
    k = len(sites)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    print(f"clouds: {k} x {tuple(clouds.shape[1:])} (MiniLM {', '.join(sites)}), "
          f"{len(pairs)} pairs, tol {args.tol} (L2 marginal), max_iter {args.max_iter}")
    for rel in args.rel_eps:
        i = torch.tensor([p[0] for p in pairs])
        j = torch.tensor([p[1] for p in pairs])
        eps = rel * sq_cost(clouds[i], clouds[j]).flatten(1).median(dim=1).values
        results = {}

        def pot(e=eps, method="sinkhorn", out=results):
            out[method] = run_pot(clouds, pairs, e, args.tol, args.max_iter, method)

        def ours(e=eps, out=results):
            out["reprlab"] = run_reprlab(clouds, pairs, e, args.tol, args.max_iter)

        print(f"\nrel_eps {rel} (eps = {rel} x median cost per pair)")
        for rows, reps in (([1], args.repeats), ([2, None], args.repeats_threads)):
            fns, setups = {}, {}
            for t in rows:
                tag = "default" if t is None else f"{t} thread{'s' if t > 1 else ''}"
                fns[f"POT sinkhorn2, {tag}"] = pot
                fns[f"reprlab sinkhorn, {tag}"] = ours
                setups[f"POT sinkhorn2, {tag}"] = lambda t=t: threads(t)
                # default: what the drift workflows do (reprlab._threads.num_threads(None))
                setups[f"reprlab sinkhorn, {tag}"] = (
                    (lambda t=t: threads(t)) if t else (lambda: _threads.num_threads(None)))
                if args.pot_log:
                    fns[f"POT sinkhorn_log, {tag}"] = lambda: pot(method="sinkhorn_log")
                    setups[f"POT sinkhorn_log, {tag}"] = lambda t=t: threads(t)
            times = rotate(fns, repeats=reps, warmup=1 if reps > 1 else 0, setups=setups)
            print(f"medians of {reps} round(s) in rotation")
            print(table(list(times.items()), ref=next(k2 for k2 in times if "reprlab" in k2)))
        cost, iters, conv = results["reprlab"]
        for name in [m for m in results if m != "reprlab"]:
            vals, its = results[name]
            rd = ((cost - vals).abs() / vals.abs()).max().item()
            print(f"  {name}: iterations {min(its)}-{max(its)}, max rel diff to reprlab "
                  f"{rd:.2e}")
        print(f"  reprlab: iterations {min(iters)}-{max(iters)}, converged on "
              f"{int(conv.sum())}/{len(pairs)} pairs")


if __name__ == "__main__":
    main()
