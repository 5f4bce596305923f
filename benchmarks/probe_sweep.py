"""Probe fitting: reprlab's batched fit against scikit-learn at equal threads and tolerance.

Work (both sides, per layer): standardise on the training rows, fit L2 logistic regression at
each strength of the grid (l2 in {1e-4 ... 1}, C = 1 / (l2 n)), choose the strength on the
validation rows, fit the random-label control at the chosen strength, score the test rows.
Both stop at max |gradient| < tol (default 1e-4, scikit-learn's default and its lbfgs rule on
the same objective); the script checks that scikit-learn stopped before its iteration cap and
reports reprlab's largest gradient entry in the original coordinates.

Variants, all timed in rotation (medians of CPU time and wall time, load printed):

- sklearn loop: ``LogisticRegression(C, max_iter=10_000)`` per strength, cold starts;
- sklearn path: one estimator with ``warm_start=True`` from the strongest to the weakest
  strength (what a careful user writes; fewer iterations);
- sklearn usual recipe: the loop at ``max_iter=100`` with warnings hidden, threads left at
  the default (it stops at the cap on the weak strengths: not converged);
- reprlab: ``probes.fitters.fit_family("logistic")``, every layer x strength x (task,
  control) in one batched fit;

each at one thread, two threads and the default (reprlab's thread policy; scikit-learn's
BLAS default).

Parts: ``bundled`` (MiniLM on builtin:cities, 7 sites x 900 training rows x 384 dims) and
``large`` (synthetic: ``--large-layers`` x ``--large-rows`` x ``--large-dims``, power-law
spectrum, a planted direction whose strength grows with depth). ``--notebook`` also times the
recipe that reruns the model for every layer and epoch (slow; extrapolated).

    python benchmarks/probe_sweep.py                       # both parts
    python benchmarks/probe_sweep.py --parts large --large-layers 4
    python benchmarks/probe_sweep.py --parts large --large-layers 80 --large-dims 8192 \
        --large-rows 1030 --large-train 30    # few rows in many dims (a 70B model's probes)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, rotate, table, threads  # noqa: E402


def standardise(X: torch.Tensor, tr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Xtr = X[:, tr]
    std = Xtr.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    return (X - Xtr.mean(1, keepdim=True)) / std, std[:, 0]


def sklearn_fit(parts, y, y_ctl, grid, *, warm: bool, max_iter: int, tol: float):
    """Per layer: every strength, choose on validation, control at the chosen strength.
    ``parts``: the training, validation and test rows ``[L, rows, d]`` and their labels'
    indices, split once outside the timed run as a careful user splits them (both sides get
    them so). Returns test accuracy at the chosen strength and at every strength,
    iterations, choice, and every solution (``fits``: layer, strength, labels, weight, intercept) so that their
    gradients can be checked outside the timed run (:func:`largest_gradient`)."""
    from sklearn.linear_model import LogisticRegression

    (Xtr, tr), (Xva, va), (Xte, te) = parts
    tr, va, te = tr.numpy(), va.numpy(), te.numpy()
    n = len(tr)
    out = {"acc": [], "acc_each": [], "iters": [], "chosen": [], "fits": []}
    order = sorted(grid, reverse=True) if warm else list(grid)
    for layer in range(Xtr.shape[0]):
        A, V, T = Xtr[layer].numpy(), Xva[layer].numpy(), Xte[layer].numpy()
        best = None
        accs = {}
        m = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=warm)
        for l2 in order:
            if not warm:
                m = LogisticRegression(max_iter=max_iter, tol=tol)
            m.set_params(C=1.0 / (l2 * n))
            m.fit(A, y[tr])
            out["iters"].append(int(m.n_iter_[0]))
            out["fits"].append((layer, l2, 0, m.coef_[0].copy(), float(m.intercept_[0])))
            p = m.predict_proba(V)
            acc = (p.argmax(1) == y[va]).mean()
            ll = -np.log(np.clip(p[np.arange(len(va)), y[va]], 1e-7, None)).mean()
            accs[l2] = float((m.predict(T) == y[te]).mean())
            key = acc - 1e-6 * ll
            if best is None or key > best[0]:
                best = (key, l2)
        ctl = LogisticRegression(C=1.0 / (best[1] * n), max_iter=max_iter, tol=tol)
        ctl.fit(A, y_ctl[tr])
        out["iters"].append(int(ctl.n_iter_[0]))
        out["fits"].append((layer, best[1], 1, ctl.coef_[0].copy(), float(ctl.intercept_[0])))
        out["acc"].append(accs[best[1]])
        out["acc_each"].append([accs[v] for v in grid])
        out["chosen"].append(best[1])
    return out


def largest_gradient(Xs, Y, tr, fits) -> float:
    """Largest gradient entry (weights and intercept) of the objective both sides minimise,
    ``mean log-loss + l2 / 2 ||w||^2``, over ``fits``: (layer, l2, label row, w, b)."""
    n, out = len(tr), 0.0
    for layer in sorted({f[0] for f in fits}):
        Xt = Xs[layer, tr].double()  # one layer at a time: 32 layers in float64 take 3 GB
        for _, l2, row, w, b in (f for f in fits if f[0] == layer):
            w = torch.as_tensor(w, dtype=torch.float64)
            r = torch.sigmoid(Xt @ w + b) - Y[row, tr].double()
            g = Xt.T @ r / n + l2 * w
            out = max(out, float(g.abs().max()), abs(float(r.mean())))
    return out


def reference_accuracy(parts, y, grid) -> tuple[list[list[float]], list[tuple]]:
    """Test accuracy ``[layer][strength]`` of the task's fits converged far past either side's
    tolerance (scikit-learn's newton-cg in float64 at tol 1e-10), and those fits in
    :func:`largest_gradient`'s form (outside the timed runs; ``--reference``)."""
    from sklearn.linear_model import LogisticRegression

    (Xtr, tr), _, (Xte, te) = parts
    tr, te = tr.numpy(), te.numpy()
    out, fits = [], []
    for layer in range(Xtr.shape[0]):
        A, T = Xtr[layer].double().numpy(), Xte[layer].double().numpy()
        row = []
        for l2 in grid:
            m = LogisticRegression(C=1.0 / (l2 * len(tr)), solver="newton-cg", tol=1e-10,
                                   max_iter=10_000).fit(A, y[tr])
            row.append(float((m.predict(T) == y[te]).mean()))
            fits.append((layer, l2, 0, m.coef_[0].copy(), float(m.intercept_[0])))
        out.append(row)
    return out, fits


def largest_gap(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest difference between two ``[layer][strength]`` tables."""
    return max(abs(u - v) for ra, rb in zip(a, b, strict=True) for u, v in zip(ra, rb,
                                                                               strict=True))


def reprlab_fit(parts, Y, std, tol):
    from reprlab.probes.fitters import fit_family

    (Xtr, tr), (Xva, va), _ = parts
    return fit_family("logistic", Xtr, Y[:, tr], n_classes=2, scale=std,
                      X_val=Xva, Y_val=Y[:, va], options={"tol": tol})


def reprlab_scores(fit, Xs, Y, tr, va, te, grid):
    """Test accuracy at the chosen strength and at every strength; the largest gradient entry
    (original coordinates) over every task and control problem."""
    from reprlab.probes.fitters import select_setting
    from reprlab.probes.logistic import linear_logits

    W, B = fit.params["weight"], fit.params["bias"]  # [L, P, H, 1, d]
    L = W.shape[0]
    h = select_setting(linear_logits(Xs[:, va], W[:, 0], B[:, 0]), Y[0, va])
    z = linear_logits(Xs[:, te], W[:, 0], B[:, 0])[..., 0]  # [L, H, m]
    acc_each = ((z > 0).long() == Y[0, te]).double().mean(-1)
    grad = largest_gradient(Xs, Y, tr, [(layer, l2, p, W[layer, p, j, 0], float(B[layer, p, j, 0]))
                                        for layer in range(L) for p in range(Y.shape[0])
                                        for j, l2 in enumerate(grid)])
    return {"acc": acc_each[torch.arange(L), h].tolist(), "acc_each": acc_each.tolist(),
            "chosen": [grid[i] for i in h.tolist()], "grad": grad}


def compare_fits(name, Xs, y, y_ctl, tr, va, te, args, thread_rows, skl_repeats) -> None:
    from reprlab.probes.fitters import L2_GRID

    grid = list(L2_GRID)
    Y = torch.stack([torch.as_tensor(y), torch.as_tensor(y_ctl)])
    Xs, std = standardise(Xs, tr)
    yn, cn = Y[0].numpy(), Y[1].numpy()
    parts = [(Xs[:, i].contiguous(), i) for i in (tr, va, te)]
    tol = args.tol
    res: dict[str, object] = {}

    def skl(warm, max_iter, key):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res[key] = sklearn_fit(parts, yn, cn, grid, warm=warm, max_iter=max_iter,
                                       tol=tol)
        return run

    def ours():
        res["reprlab"] = reprlab_fit(parts, Y, std, tol)

    def variants(rows, sk_rows):
        fns, setups = {}, {}
        for t in rows:
            tag = "default" if t is None else f"{t} thread{'s' if t > 1 else ''}"
            fns[f"reprlab, {tag}"] = ours
            setups[f"reprlab, {tag}"] = lambda t=t: threads(t)
            if t not in sk_rows:
                continue
            for label, warm in (("sklearn loop", False), ("sklearn path (warm start)", True)):
                if label == "sklearn loop" and name == "large" and not args.sklearn_loop:
                    continue
                fns[f"{label}, {tag}"] = skl(warm, 10_000, label)
                setups[f"{label}, {tag}"] = lambda t=t: threads(t)
        return fns, setups

    print(f"\n== {name}: {Xs.shape[0]} layers x {len(tr)} training rows x {Xs.shape[-1]} dims, "
          f"{len(grid)} strengths, task + control; tol {tol:g} (max |gradient|) ==")
    fns, setups = variants([1], args.sklearn_threads_rows)
    times = rotate(fns, repeats=skl_repeats, warmup=0 if name == "large" else 1, setups=setups)
    print(f"one thread on both sides, medians of {skl_repeats} rounds in rotation:")
    print(table(list(times.items()), ref="reprlab, 1 thread"))
    fns, setups = variants([2, None], args.sklearn_threads_rows)
    if args.usual:
        fns["sklearn usual recipe (max_iter 100), default"] = skl(False, 100, "usual")
    times2 = rotate(fns, repeats=args.repeats_threads, warmup=0, setups=setups)
    print(f"two threads and each side's default (scikit-learn's BLAS default is every core), "
          f"{args.repeats_threads} round(s) in rotation; ratios to reprlab at one thread:")
    print(table([("reprlab, 1 thread", times["reprlab, 1 thread"])] + list(times2.items()),
                ref="reprlab, 1 thread"))
    ours_s = reprlab_scores(res["reprlab"], Xs, Y, tr, va, te, grid)
    for key in ("sklearn loop", "sklearn path (warm start)", "usual"):
        if key not in res:
            continue
        s = res[key]
        cap = 100 if key == "usual" else 10_000
        gap = max(abs(a - b) for a, b in zip(ours_s["acc"], s["acc"], strict=True))
        gap_each = largest_gap(ours_s["acc_each"], s["acc_each"])
        same = sum(a == b for a, b in zip(ours_s["chosen"], s["chosen"], strict=True))
        print(f"  vs {key}: max |test acc diff| over layers {gap:.4f} at the chosen strength "
              f"(same choice on {same}/{len(s['chosen'])} layers), {gap_each:.4f} at equal "
              f"strength; its iterations {min(s['iters'])}-{max(s['iters'])} (sum "
              f"{sum(s['iters'])}; cap {cap}: {'hit' if max(s['iters']) >= cap else 'not hit'}); "
              f"its largest gradient entry {largest_gradient(Xs, Y, tr, s['fits']):.2e}")
    info = res["reprlab"].info
    print(f"  reprlab: {info.get('iterations')} iterations, converged share "
          f"{info.get('converged'):.3f} ({info.get('polished', 0)} problems finished in "
          f"float64), largest gradient entry {ours_s['grad']:.2e} "
          f"(original coordinates; tol {tol:g})")
    if args.reference:
        ref, ref_fits = reference_accuracy(parts, yn, grid)
        gaps = {"reprlab": ours_s["acc_each"], **{k: res[k]["acc_each"] for k in (
            "sklearn loop", "sklearn path (warm start)") if k in res}}
        print(f"  vs a converged reference (scikit-learn newton-cg, float64, tol 1e-10; its "
              f"largest gradient entry {largest_gradient(Xs, Y, tr, ref_fits):.1e}): largest "
              f"test-accuracy gap at equal strength: "
              + ", ".join(f"{k} {largest_gap(v, ref):.4f}" for k, v in gaps.items()))
    print("  test accuracy per layer (reprlab / sklearn loop or path): " + ", ".join(
        f"{a:.3f}/{b:.3f}" for a, b in zip(ours_s["acc"], res.get(
            "sklearn path (warm start)", res.get("sklearn loop", {"acc": ours_s["acc"]}))["acc"],
            strict=True)))


def bundled(args) -> None:
    from reprlab.capture import capture
    from reprlab.data import load_dataset
    from reprlab.probes.controls import permuted_labels
    from reprlab.probes.splits import split_rows

    ds = load_dataset(args.data, limit=args.rows or None)
    y = torch.tensor(ds.labels)
    parts = split_rows(y, (0.6, 0.2, 0.2), ds.groups, 0)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    with tempfile.TemporaryDirectory() as tmp, threads(1):
        c0, w0 = time.process_time(), time.perf_counter()
        store = capture("minilm", ds, "embed,layers.*", [args.position], f"{tmp}/store",
                        progress=False)
        cap = (time.process_time() - c0, time.perf_counter() - w0)
        X = torch.stack([store[s, args.position].clone() for s in store.sites]).float()
    print(f"capture once (shared by every variant, 1 thread): {cap[0]:.2f} CPU s, {cap[1]:.2f} "
          f"wall s; {len(ds)} rows (train {len(tr)}, val {len(va)}, test {len(te)})")
    ctl = permuted_labels(y, ds.groups, 0)[0]
    compare_fits("bundled", X, y.numpy(), ctl.numpy(), tr, va, te, args,
                 [1, 2, None], args.repeats)
    if args.notebook:
        notebook_part(args, ds, y, tr, te)


def synthetic(L: int, n: int, d: int, seed: int = 0, signal: float = 1.5
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with eigenvalues ~ 1/i (a random mixing of power-law scaled noise) plus a
    planted direction ``u`` separating the classes by 0 (first layer) to ``signal`` standard
    deviations of the rows along ``u`` (last layer)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    out = torch.empty(L, n, d)
    for layer in range(L):
        A = torch.randn(d, d, generator=g) / d ** 0.5
        X = (torch.randn(n, d, generator=g) * scales) @ A + 0.02 * torch.randn(n, d, generator=g)
        alpha = signal * layer / max(1, L - 1)
        out[layer] = X + alpha * (X @ u).std() * (2 * y[:, None].float() - 1) * u
    return out, y


def large(args) -> None:
    with threads(1):
        X, y = synthetic(args.large_layers, args.large_rows, args.large_dims,
                         signal=args.large_signal)
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    a = args.large_train or int(0.6 * n)
    if not 0 < a < n - 1:
        sys.exit(f"error: --large-train {a} leaves no validation or test rows of "
                 f"--large-rows {n}; give fewer training rows or more rows")
    b = a + (n - a) // 2
    tr, va, te = (perm[i:j].sort().values for i, j in ((0, a), (a, b), (b, n)))
    ctl = y[torch.randperm(n, generator=torch.Generator().manual_seed(2))]
    compare_fits("large", X, y.numpy(), ctl.numpy(), tr, va, te, args, [1, 2, None],
                 args.large_repeats)


def notebook_part(args, ds, y, tr, te) -> None:
    """Rerun the model for every layer and epoch (AdamW probe on the fly, Marks & Tegmark
    2023: no bias, lr 1e-3, wd 0.1); one epoch measured per layer, extrapolated."""
    from reprlab.models import load_model

    lm = load_model("minilm")
    model, tok = lm.model, lm.tokenizer
    model.eval()
    texts = ds.texts
    per_epoch = []
    for index in range(lm.arch.n_layers + 1):
        probe = torch.nn.Linear(lm.arch.hidden_size, 1, bias=False)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.1)
        c0 = time.process_time()
        for s in range(0, len(tr), 32):
            rows = tr[s:s + 32].tolist()
            enc = tok([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad(), threads(1):
                hs = model(**enc, output_hidden_states=True).hidden_states[index]
            m = enc["attention_mask"].unsqueeze(-1).to(hs.dtype)
            x = (hs * m).sum(1) / m.sum(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                probe(x).squeeze(-1), y[rows].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_epoch.append(time.process_time() - c0)
    med = statistics.median(per_epoch)
    print(f"\nnotebook recipe: {med:.2f} CPU s per layer per epoch (1 thread); "
          f"{args.nb_epochs} epochs x {len(per_epoch)} layers -> "
          f"{med * args.nb_epochs * len(per_epoch):.0f} CPU s (extrapolated)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="bundled,large")
    ap.add_argument("--data", default="builtin:cities")
    ap.add_argument("--rows", type=int, default=0, help="first N rows (0 = all)")
    ap.add_argument("--position", default="mean")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the bundled rotation")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--large-layers", type=int, default=4)
    ap.add_argument("--large-rows", type=int, default=5000)
    ap.add_argument("--large-dims", type=int, default=4096)
    ap.add_argument("--large-signal", type=float, default=1.5,
                    help="the planted direction's separation at the last layer, in standard "
                         "deviations of the rows along it")
    ap.add_argument("--large-train", type=int, default=0,
                    help="training rows of the large part (default 60%%); validation and "
                         "test split the rest evenly")
    ap.add_argument("--large-repeats", type=int, default=2)
    ap.add_argument("--reference", action="store_true",
                    help="also compare both sides' test accuracy with fits converged to tol "
                         "1e-10 (scikit-learn newton-cg, float64; outside the timed runs)")
    ap.add_argument("--sklearn-loop", action="store_true",
                    help="large part: also time the cold-start sklearn loop (slow)")
    ap.add_argument("--no-usual", dest="usual", action="store_false",
                    help="skip the max_iter=100 'usual recipe' row")
    ap.add_argument("--repeats-threads", type=int, default=1,
                    help="rounds of the two-thread / default rotation (slow on a busy machine)")
    ap.add_argument("--sklearn-threads", default="1,2",
                    help="thread rows at which sklearn is timed")
    ap.add_argument("--notebook", action="store_true", help="also time the notebook recipe")
    ap.add_argument("--nb-epochs", type=int, default=20)
    args = ap.parse_args()
    args.sklearn_threads_rows = [None if t == "default" else int(t)
                                 for t in args.sklearn_threads.split(",")]
    print(machine())
    if "bundled" in args.parts:
        bundled(args)
    if "large" in args.parts:
        args.usual = False
        large(args)
    print(f"\nload after: {machine().split('; ')[0]}")


if __name__ == "__main__":
    main()
