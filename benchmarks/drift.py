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

Prints the median time of each over ``--repeats`` runs (run in rotation), the ratio, the
largest relative difference of the 21 values and the iteration counts.

    python benchmarks/drift.py                         # 1,000 points, rel_eps 0.1 and 0.05
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="reuse/keep the capture here")
    ap.add_argument("--pot-log", action="store_true", help="also time POT's sinkhorn_log")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from reprlab.drift.ot import sq_cost

    clouds, sites = load_clouds(args.points, args.seed, args.store)
    k = len(sites)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    print(f"clouds: {k} x {tuple(clouds.shape[1:])} (MiniLM {', '.join(sites)}), "
          f"{len(pairs)} pairs, tol {args.tol} (L2 marginal), max_iter {args.max_iter}, "
          f"{args.threads} threads")
    for rel in args.rel_eps:
        i = torch.tensor([p[0] for p in pairs])
        j = torch.tensor([p[1] for p in pairs])
        eps = rel * sq_cost(clouds[i], clouds[j]).flatten(1).median(dim=1).values
        methods = {"pot": lambda e=eps: run_pot(clouds, pairs, e, args.tol, args.max_iter,
                                                 "sinkhorn"),
                   "reprlab": lambda e=eps: run_reprlab(clouds, pairs, e, args.tol, args.max_iter)}
        if args.pot_log:
            methods["pot_log"] = lambda e=eps: run_pot(clouds, pairs, e, args.tol,
                                                       args.max_iter, "sinkhorn_log")
        times: dict[str, list[float]] = {m: [] for m in methods}
        results = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
        med = {m: statistics.median(t) for m, t in times.items()}
        ours, ours_iter, conv = results["reprlab"]
        print(f"\nrel_eps {rel} (ε = {rel} × median cost per pair)")
        for name in methods:
            vals, iters = results[name][0], results[name][1]
            line = f"  {name:8s} {med[name]:8.3f} s   iterations {min(iters)}-{max(iters)}"
            if name != "reprlab":
                rd = ((ours - vals).abs() / vals.abs()).max().item()
                line += (f"   ratio {med[name] / med['reprlab']:.2f}x   "
                         f"max rel diff {rd:.2e}")
            print(line)
        print(f"  reprlab converged on {int(conv.sum())}/{len(pairs)} pairs")


if __name__ == "__main__":
    main()
