"""Probe sweep: reprlab against the two ways people usually do it, one run, same data/split.

(a) notebook: for every layer and every epoch, run the model again over the training rows and
    train a probe on the fly with AdamW (Marks & Tegmark 2023: no bias, lr 1e-3, wd 0.1).
    Measured for ``--nb-epochs-measured`` epochs per layer, then extrapolated linearly to
    ``--nb-epochs`` epochs (printed as such).
(b) capture once, then scikit-learn ``LogisticRegression`` layer by layer, doing the same
    work as reprlab: standardise on train, choose C on validation from the same grid, fit the
    random-label control with the chosen C.
(c) reprlab: ``capture`` + ``probes.sweep`` (logistic; grid, controls, bootstrap CIs,
    directions, per-example predictions) - all layers fitted in one batched computation.

    python benchmarks/probe_sweep.py                      # MiniLM + builtin:cities, mean
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch


def notebook(lm, texts, y, tr, te, layers, epochs, batch_size=32, seed=0):
    """(a): forward pass again for every epoch and layer; AdamW probe trained on the fly."""
    model, tok = lm.model, lm.tokenizer
    model.eval()
    per_layer = {}

    def pooled(rows, layer_index):
        enc = tok([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states[layer_index]
        m = enc["attention_mask"].unsqueeze(-1).to(hs.dtype)
        return (hs * m).sum(1) / m.sum(1)

    for name, index in layers:
        gen = torch.Generator().manual_seed(seed)
        probe = torch.nn.Linear(lm.arch.hidden_size, 1, bias=False)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.1)
        t0 = time.perf_counter()
        for _ in range(epochs):
            order = tr[torch.randperm(len(tr), generator=gen)]
            for s in range(0, len(order), batch_size):
                rows = order[s:s + batch_size].tolist()
                x = pooled(rows, index)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    probe(x).squeeze(-1), y[rows].float())
                opt.zero_grad()
                loss.backward()
                opt.step()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(te), batch_size):
                rows = te[s:s + batch_size].tolist()
                correct += int(((probe(pooled(rows, index)).squeeze(-1) > 0).long() == y[rows]).sum())
        t_eval = time.perf_counter() - t0
        per_layer[name] = {"train_s_per_epoch": t_train / epochs, "eval_s": t_eval,
                           "acc": correct / len(te)}
    return per_layer


def sklearn_layers(X, y, y_ctl, tr, va, te, grid_l2):
    """(b): StandardScaler + LogisticRegression per layer over the C grid, then the control."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = len(tr)
    accs, t_fit = [], 0.0
    for layer in range(X.shape[0]):
        Xl = X[layer].numpy()
        t0 = time.perf_counter()
        sc = StandardScaler().fit(Xl[tr])
        Xtr, Xva, Xte = sc.transform(Xl[tr]), sc.transform(Xl[va]), sc.transform(Xl[te])
        best, best_key = None, None
        for l2 in grid_l2:
            m = LogisticRegression(C=1.0 / (l2 * n)).fit(Xtr, y[tr])
            p = m.predict_proba(Xva)
            acc = (p.argmax(1) == y[va]).mean()
            ll = -np.log(np.clip(p[np.arange(len(va)), y[va]], 1e-7, None)).mean()
            key = acc - 1e-6 * ll
            if best_key is None or key > best_key:
                best, best_key, best_l2 = m, key, l2
        LogisticRegression(C=1.0 / (best_l2 * n)).fit(Xtr, y_ctl[tr])  # control, same budget
        t_fit += time.perf_counter() - t0
        accs.append(float((best.predict(Xte) == y[te]).mean()))
    return accs, t_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="builtin:cities")
    ap.add_argument("--rows", type=int, default=0, help="first N rows (0 = all)")
    ap.add_argument("--position", default="mean")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of (b) and (c); medians")
    ap.add_argument("--nb-epochs-measured", type=int, default=1)
    ap.add_argument("--nb-epochs", type=int, default=20, help="epochs (a) is extrapolated to")
    ap.add_argument("--nb-layers", type=int, default=0, help="layers (a) measures (0 = all)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from reprlab.capture import capture
    from reprlab.data import load_dataset
    from reprlab.models import load_model
    from reprlab.probes.controls import permuted_labels
    from reprlab.probes.fitters import L2_GRID, fit_family
    from reprlab.probes.splits import split_rows
    from reprlab.probes.sweep import sweep

    ds = load_dataset(args.data, limit=args.rows or None)
    lm = load_model("minilm")
    y = torch.tensor(ds.labels)
    parts = split_rows(y, (0.6, 0.2, 0.2), ds.groups, 0)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    sites = ["embed"] + [f"layers.{i}" for i in range(lm.arch.n_layers)]
    print(f"data {args.data}: {len(ds)} rows (train {len(tr)}, val {len(va)}, test {len(te)}); "
          f"model {lm.name}; {len(sites)} sites; position {args.position}; "
          f"torch threads {torch.get_num_threads()}")

    # (c) reprlab ------------------------------------------------------------------------
    cap_t, sweep_t, fit_t = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = capture(lm, ds, "embed,layers.*", [args.position], f"{tmp}/store",
                            progress=False)
            cap_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = sweep(store, probes=["logistic"], positions=[args.position], progress=False)
            sweep_t.append(time.perf_counter() - t0)
            X = torch.stack([store[s, args.position].clone() for s in sites])
    c_acc = [r["test_acc"] for r in res.rows]
    Xtr = X[:, tr]
    mean, std = Xtr.mean(1, keepdim=True), Xtr.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    Xs = (X - mean) / std
    Y = torch.stack([y, permuted_labels(y, ds.groups, 0)[0]])
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fit_family("logistic", Xs[:, tr], Y[:, tr], n_classes=2, scale=std[:, 0],
                   X_val=Xs[:, va], Y_val=Y[:, va])
        fit_t.append(time.perf_counter() - t0)

    # (b) capture once + sklearn per layer -----------------------------------------------
    b_fit = []
    for _ in range(args.repeats):
        b_acc, t = sklearn_layers(X, y.numpy(), Y[1].numpy(), tr.numpy(), va.numpy(),
                                  te.numpy(), L2_GRID)
        b_fit.append(t)

    # (a) notebook -----------------------------------------------------------------------
    chosen = list(enumerate(sites))
    if args.nb_layers:
        chosen = chosen[:: max(1, len(chosen) // args.nb_layers)][: args.nb_layers]
    nb = notebook(lm, ds.texts, y, tr, te, [(s, i) for i, s in chosen], args.nb_epochs_measured)
    per_epoch = statistics.median(v["train_s_per_epoch"] for v in nb.values())
    eval_s = statistics.median(v["eval_s"] for v in nb.values())
    measured = sum(v["train_s_per_epoch"] * args.nb_epochs_measured + v["eval_s"] for v in nb.values())
    a_total = len(sites) * (per_epoch * args.nb_epochs + eval_s)

    med = statistics.median
    c_e2e = med(cap_t) + med(sweep_t)
    b_e2e = med(cap_t) + med(b_fit)
    print("\nper-site test accuracy (same split)")
    print(f"  {'site':<10}{'(a) notebook*':>15}{'(b) sklearn':>13}{'(c) reprlab':>13}{'c - b':>8}")
    for i, s in enumerate(sites):
        a = f"{nb[s]['acc']:.3f}" if s in nb else "-"
        print(f"  {s:<10}{a:>15}{b_acc[i]:>13.3f}{c_acc[i]:>13.3f}{c_acc[i] - b_acc[i]:>+8.3f}")
    print(f"  * (a) after {args.nb_epochs_measured} epoch(s) of AdamW; not comparable in accuracy")
    print(f"\ntimes (seconds, medians of {args.repeats})")
    print(f"  capture once (used by b and c)      {med(cap_t):8.2f}")
    print(f"  (b) sklearn fitting, all sites      {med(b_fit):8.2f}   (grid of {len(L2_GRID)} C + control)")
    print(f"  (c) reprlab fitting, all sites      {med(fit_t):8.3f}   (same grid + control, one batch)")
    print(f"  (c) reprlab whole sweep             {med(sweep_t):8.2f}   (+ metrics, 1000-resample CIs, "
          "directions, predictions)")
    print(f"  (a) notebook measured               {measured:8.2f}   ({len(nb)} sites x "
          f"{args.nb_epochs_measured} epoch + test pass)")
    print(f"  (a) notebook extrapolated           {a_total:8.1f}   ({len(sites)} sites x "
          f"{args.nb_epochs} epochs: {per_epoch:.2f} s/epoch + {eval_s:.2f} s test pass per site)")
    print("\nratios")
    print(f"  end to end (a)/(c)   {a_total / c_e2e:7.1f}x   (goal >= 20x; (a) extrapolated)")
    print(f"  end to end (b)/(c)   {b_e2e / c_e2e:7.2f}x")
    print(f"  fitting    (b)/(c)   {med(b_fit) / med(fit_t):7.1f}x   (goal >= 10x)")
    gap = max(abs(c - b) for c, b in zip(c_acc, b_acc))
    print(f"  max |acc (c) - acc (b)| over sites = {gap:.3f}   (goal <= 0.02)")


if __name__ == "__main__":
    main()
