"""Numbers of the probe maths: planted signals, parity with scikit-learn, exact identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprlab.errors import ConfigError, DataError, ReprlabError, SiteError
from reprlab.probes import metrics as M
from reprlab.probes.controls import permuted_labels
from reprlab.probes.frozen import Probe
from reprlab.probes.logistic import fit_logistic, l2_from_C
from reprlab.probes.massmean import fit_massmean, shrunk_covariance
from reprlab.probes.memory import TensorStore
from reprlab.probes.splits import kfold_rows, split_rows
from reprlab.probes.sweep import sweep

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402


def planted(n=600, d=48, layers=3, seed=0, strength=(0.0, 1.0, 3.0), classes=2, aniso=True):
    """Activations whose class signal lies along one direction ``u`` with per-layer strength,
    plus a large class-independent offset and anisotropic noise (standardisation matters)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = torch.randint(0, classes, (n,), generator=g)
    scales = torch.linspace(0.5, 2.0, d) if aniso else torch.ones(d)
    offset = 5.0 + 3.0 * torch.randn(d, generator=g)
    tensors = {}
    for layer in range(layers):
        noise = torch.randn(n, d, generator=g) * scales
        signal = strength[layer] * (y.float() - (classes - 1) / 2)[:, None] * u
        tensors[(f"layers.{layer}", "mean")] = noise + signal + offset
    return TensorStore(tensors, labels=y), u, y


def cos(a, b):
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def test_planted_direction_recovered_and_controls_near_chance():
    # isotropic noise: the Bayes direction is u itself (anisotropic noise would tilt it)
    # (strength 4 -> Bayes accuracy ~0.977; a separable set would let weak L2 wander)
    store, u, _ = planted(n=1500, d=32, strength=(0.0, 1.0, 4.0), aniso=False)
    res = sweep(store, probes=["logistic", "mass-mean"], progress=False, bootstrap=200)
    for fam in ("logistic", "mass-mean"):
        top = next(r for r in res.rows if r["site"] == "layers.2" and r["family"] == fam)
        assert top["test_acc"] > 0.95, top
        assert top["test_acc_lo"] <= top["test_acc"] <= top["test_acc_hi"]
        assert abs(top["control_acc"] - 0.5) < 0.1, top
        assert top["selectivity"] > 0.35
        assert cos(res.probes[("layers.2", "mean", fam)].direction, u) > 0.95
        none = next(r for r in res.rows if r["site"] == "layers.0" and r["family"] == fam)
        assert abs(none["test_acc"] - 0.5) < 0.12  # no signal at layer 0
    assert res.best["site"] == "layers.2"
    assert cos(res.best["direction"], u) > 0.95


def test_logistic_fits_cut_off_at_max_iter_are_reported(caplog):
    store, _, _ = planted(n=400, d=32, strength=(0.0, 1.0, 4.0))
    with caplog.at_level("WARNING", logger="reprlab.probes.sweep"):
        sweep(store, probes=["logistic"], progress=False, bootstrap=0)
    assert not [r for r in caplog.records if "max_iter" in r.getMessage()]
    with caplog.at_level("WARNING", logger="reprlab.probes.sweep"):
        sweep(store, probes=["logistic"], progress=False, bootstrap=0,
              options={"logistic": {"max_iter": 2}})
    (msg,) = [r.getMessage() for r in caplog.records if "max_iter" in r.getMessage()]
    assert "at max_iter 2" in msg and "tol 0.0001" in msg and "% of the fits" in msg


def test_several_controls_are_averaged_and_the_first_is_the_single_one():
    store, _, _ = planted(n=400, d=16, strength=(0.0, 1.0, 3.0))
    one = sweep(store, probes=["logistic", "mass-mean"], progress=False, bootstrap=0)
    many = sweep(store, probes=["logistic", "mass-mean"], progress=False, bootstrap=0,
                 controls=4)
    assert many.config["controls"] == 4 and one.config["controls"] == 1
    for a, b in zip(one.rows, many.rows, strict=True):
        each = b["control_acc_each"]
        assert len(each) == 4 and a["control_acc_each"] is None
        # the task fit is unchanged; the first permutation is the one a single control uses
        assert b["test_acc"] == a["test_acc"]
        assert each[0] == pytest.approx(a["control_acc"], abs=1e-6)
        assert b["control_acc"] == pytest.approx(sum(each) / 4, abs=1e-6)
        assert b["selectivity"] == pytest.approx(b["test_acc"] - b["control_acc"], abs=1e-6)
        assert len(set(each)) > 1  # different permutations, different controls
    none = sweep(store, probes=["mass-mean"], progress=False, bootstrap=0, controls=0)
    assert all(r["control_acc"] is None and r["selectivity"] is None for r in none.rows)
    with pytest.raises(ReprlabError, match="controls"):
        sweep(store, probes=["mass-mean"], progress=False, controls=-1)


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_logistic_matches_sklearn_at_same_regularisation(C):
    g = torch.Generator().manual_seed(1)
    n, d = 400, 20
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = (X @ w + 1.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0.3).long()
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X.numpy(), y.numpy())
    fit = fit_logistic(X[None], y, n_classes=2, l2=l2_from_C(C, n), tol=1e-9, max_iter=2000)
    ours_w, ours_b = fit.weight[0, 0, 0], fit.bias[0, 0, 0]
    assert bool(fit.converged.all())
    assert cos(ours_w, ref.coef_[0]) > 0.9999
    assert np.allclose(ours_w.numpy(), ref.coef_[0], atol=1e-4)
    assert abs(float(ours_b) - ref.intercept_[0]) < 1e-4
    ours_acc = float(((X @ ours_w + ours_b > 0).long() == y).double().mean())
    assert abs(ours_acc - ref.score(X.numpy(), y.numpy())) <= 0.01


def test_logistic_multiclass_matches_sklearn_multinomial():
    g = torch.Generator().manual_seed(2)
    n, d, K = 450, 12, 3
    centers = torch.randn(K, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, K, (n,), generator=g)
    X = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X.numpy(), y.numpy())
    fit = fit_logistic(X[None], y, n_classes=K, l2=l2_from_C(0.5, n), tol=1e-9, max_iter=3000)
    assert cos(fit.weight[0, 0], ref.coef_) > 0.9999
    b = fit.bias[0, 0].numpy()  # softmax intercepts are defined up to a common shift
    assert np.allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-3)
    pred = (torch.einsum("nd,kd->nk", X, fit.weight[0, 0]) + fit.bias[0, 0]).argmax(-1)
    assert (pred.numpy() == ref.predict(X.numpy())).mean() > 0.99


def test_batched_layers_equal_single_layer_fits():
    g = torch.Generator().manual_seed(3)
    L, n, d = 4, 300, 16
    X = torch.randn(L, n, d, generator=g, dtype=torch.float64)
    y = (X[2, :, 0] + X[1, :, 1] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    Y = torch.stack([y, y.flip(0)])
    l2 = torch.tensor([1e-2, 1e-1], dtype=torch.float64)
    both = fit_logistic(X, Y, n_classes=2, l2=l2, tol=1e-10, max_iter=1000)
    for layer in range(L):
        for p in range(2):
            one = fit_logistic(X[layer:layer + 1], Y[p], n_classes=2, l2=float(l2[p]),
                               tol=1e-10, max_iter=1000)
            assert torch.allclose(both.weight[layer, p], one.weight[0, 0], atol=1e-6)
            assert torch.allclose(both.bias[layer, p], one.bias[0, 0], atol=1e-6)


def test_massmean_is_mean_difference_in_raw_space():
    store, _, y = planted(n=300, d=10, layers=2, strength=(1.0, 2.0))
    res = sweep(store, probes=["mass-mean"], progress=False, bootstrap=0)
    train = torch.arange(300)[torch.isin(torch.arange(300), _train_rows(store))]
    for layer in range(2):
        X = store[f"layers.{layer}", "mean"][train]
        yt = y[train]
        direct = X[yt == 1].mean(0) - X[yt == 0].mean(0)
        probe = res.probes[(f"layers.{layer}", "mean", "mass-mean")]
        assert cos(probe.direction[0], direct) > 0.99999
        assert torch.allclose(res.directions[(f"layers.{layer}", "mean")]["mean_difference"],
                              direct / direct.norm(), atol=1e-5)


def _train_rows(store):
    return split_rows(store.labels, (0.6, 0.2, 0.2), None, 0)["train"]


def test_massmean_iid_uses_shrunk_within_class_covariance():
    g = torch.Generator().manual_seed(4)
    n, d = 200, 6
    X = torch.randn(1, n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    out = fit_massmean(X, y, n_classes=2, scale=torch.ones(1, d, dtype=torch.float64), iid=True,
                       shrinkage=0.0)
    R = X[0].clone()
    mu0, mu1 = X[0, y == 0].mean(0), X[0, y == 1].mean(0)
    R[y == 0] -= mu0
    R[y == 1] -= mu1
    direct = torch.linalg.solve(R.T @ R / n, mu1 - mu0)
    assert cos(out["direction"][0, 0, 0], direct) > 0.999999
    from sklearn.covariance import ledoit_wolf
    cov, alpha = shrunk_covariance(R)
    ref_cov, ref_alpha = ledoit_wolf(R.numpy(), assume_centered=True)
    assert abs(float(alpha) - ref_alpha) < 1e-10
    assert np.allclose(cov.numpy(), ref_cov, atol=1e-10)


def test_multiclass_sweep_all_families():
    store, _, _ = planted(n=600, d=16, layers=2, strength=(0.0, 4.0), classes=3)
    res = sweep(store, probes=["logistic", "mass-mean", "mass-mean-iid", "mlp"], progress=False,
                bootstrap=100, options={"mlp": {"max_epochs": 150}})
    for fam in ("logistic", "mass-mean", "mass-mean-iid", "mlp"):
        good = next(r for r in res.rows if r["site"] == "layers.1" and r["family"] == fam)
        assert good["test_acc"] > 0.85, (fam, good)
        assert abs(good["control_acc"] - 1 / 3) < 0.12
        probe = res.probes[("layers.1", "mean", fam)]
        p = probe(store["layers.1", "mean"][:5])
        assert p.shape == (5, 3) and torch.allclose(p.sum(-1), torch.ones(5), atol=1e-5)


def test_same_seed_same_numbers_and_seed_matters():
    store, _, _ = planted(n=300, d=12, layers=2, strength=(0.5, 1.0))
    a = sweep(store, probes=["logistic", "mlp"], seed=5, progress=False, bootstrap=50,
              options={"mlp": {"max_epochs": 30}})
    b = sweep(store, probes=["logistic", "mlp"], seed=5, progress=False, bootstrap=50,
              options={"mlp": {"max_epochs": 30}})
    assert a.rows == b.rows
    c = sweep(store, probes=["logistic"], seed=6, progress=False, bootstrap=50)
    assert [r["test_acc"] for r in c.rows] != [r["test_acc"] for r in a.rows if r["family"] == "logistic"]


def test_metrics_match_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (300,), generator=g)
    p1 = (torch.rand(300, generator=g, dtype=torch.float64) * 0.6 + 0.4 * y).round(decimals=2)
    probs = torch.stack([1 - p1, p1], -1)  # rounded: ties included
    assert abs(float(M.auroc(probs, y)) - roc_auc_score(y.numpy(), p1.numpy())) < 1e-12
    assert abs(float(M.log_loss(probs, y)) - log_loss(y.numpy(), probs.numpy())) < 1e-6
    y3 = torch.randint(0, 3, (300,), generator=g)
    p3 = torch.softmax(torch.randn(300, 3, generator=g, dtype=torch.float64) + 2 * torch.nn.functional.one_hot(y3), -1)
    ref = roc_auc_score(y3.numpy(), p3.numpy(), multi_class="ovr", average="macro")
    assert abs(float(M.auroc(p3, y3)) - ref) < 1e-12
    s = M.score(probs[None].expand(2, -1, -1), y, resamples=500, seed=0)
    assert torch.equal(s["accuracy"]["lo"], M.score(probs[None], y, resamples=500, seed=0)["accuracy"]["lo"].expand(2))
    acc = s["accuracy"]
    assert bool((acc["lo"] < acc["value"]).all() and (acc["value"] < acc["hi"]).all())
    # the interval width matches the binomial standard error (about +-1.96 sqrt(p(1-p)/n))
    se = float((acc["value"][0] * (1 - acc["value"][0]) / 300).sqrt())
    assert abs(float(acc["hi"][0] - acc["lo"][0]) - 2 * 1.96 * se) < 0.02


def test_linear_readout_reproduces_probe_probabilities():
    store, _, _ = planted(n=300, d=8, layers=1, strength=(3.0,))
    res = sweep(store, probes=["logistic", "mass-mean", "mlp"], progress=False, bootstrap=0,
                options={"mlp": {"max_epochs": 5}})
    x = store["layers.0", "mean"][:50]
    for fam in ("logistic", "mass-mean"):
        probe = res.probes[("layers.0", "mean", fam)]
        w, b = probe.linear_readout()
        torch.testing.assert_close(torch.sigmoid(x @ w + b), probe(x)[:, 1], atol=1e-5, rtol=0)
        # the unit direction is the raw weight's
        torch.testing.assert_close(probe.direction[0], w / w.norm(), atol=1e-6, rtol=0)
    assert res.linear_probes()["layers.0"].family in ("logistic", "mass-mean")
    with pytest.raises(ReprlabError, match="no single linear score"):
        res.probes[("layers.0", "mean", "mlp")].linear_readout()
    with pytest.raises(ReprlabError, match="no linear probe"):
        res.linear_probes(family="mlp")


def test_probe_save_load_roundtrip(tmp_path):
    store, _, _ = planted(n=300, d=8, layers=1, strength=(3.0,))
    for fam in ("logistic", "mlp"):
        res = sweep(store, probes=[fam], progress=False, bootstrap=0,
                    options={"mlp": {"max_epochs": 20}})
        probe = res.probes[("layers.0", "mean", fam)]
        stem = probe.save(tmp_path / f"layers.0__mean__{fam}")  # dots in site names
        assert (tmp_path / f"layers.0__mean__{fam}.safetensors").exists()
        back = Probe.load(f"{stem}.json")
        x = store["layers.0", "mean"][:7]
        assert torch.equal(back(x), probe(x))
        assert back.classes == probe.classes and back.family == fam
        assert back.to("cpu", torch.float64)(x.double()).dtype == torch.float64
    with pytest.raises(ReprlabError):
        Probe.load(tmp_path / "missing")


def test_splits_keep_groups_together_and_stratify():
    labels = [i % 2 for i in range(400)]
    groups = [f"g{i // 2}" for i in range(400)]
    parts = split_rows(labels, (0.6, 0.2, 0.2), groups, seed=1)
    owner = {}
    for name, rows in parts.items():
        for r in rows.tolist():
            assert owner.setdefault(groups[r], name) == name
        share = sum(labels[r] for r in rows.tolist()) / len(rows)
        assert abs(share - 0.5) < 0.02
    assert sum(len(v) for v in parts.values()) == 400
    folds = kfold_rows(labels[:40], 5, groups[:40], seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(40))
    ctl = permuted_labels(torch.tensor(labels), groups, seed=0)[0]
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        assert sorted(ctl[idx].tolist()) == sorted(labels[i] for i in idx)
    assert not torch.equal(ctl, torch.tensor(labels))


def test_cross_validation_on_small_data():
    store, _, _ = planted(n=60, d=8, layers=2, strength=(0.0, 4.0))
    res = sweep(store, probes=["logistic"], progress=False, bootstrap=100)
    assert res.config["mode"] == "cv"
    top = next(r for r in res.rows if r["site"] == "layers.1")
    assert top["n_test"] == 60 and top["test_acc"] > 0.9


def test_bad_input_one_clear_line():
    store, _, y = planted(n=200, d=8, layers=1)
    nolabels = TensorStore({("layers.0", "mean"): store["layers.0", "mean"]})
    with pytest.raises(DataError, match="no labels"):
        sweep(nolabels, progress=False)
    one = TensorStore({("layers.0", "mean"): store["layers.0", "mean"]}, labels=torch.zeros(200))
    with pytest.raises(DataError, match="single class"):
        sweep(one, progress=False)
    with pytest.raises(ConfigError, match="known families: logistic, mass-mean"):
        sweep(store, probes=["ridge"], progress=False)
    with pytest.raises(SiteError, match="it holds: layers.0"):
        sweep(store, sites="layers.9", progress=False)
    with pytest.raises(SiteError, match="it holds: mean"):
        sweep(store, positions="last", progress=False)
    tiny = TensorStore({("layers.0", "mean"): torch.randn(8, 4)}, labels=[0, 1] * 4)
    with pytest.raises(DataError, match="too few rows|single class"):
        sweep(tiny, progress=False, split=(0.8, 0.1, 0.1), folds=None)
    skew = TensorStore({("layers.0", "mean"): torch.randn(150, 4)}, labels=[1] + [0] * 149)
    with pytest.raises(DataError, match="too few rows"):
        sweep(skew, progress=False)
    for exc in (DataError, ConfigError, SiteError):
        assert issubclass(exc, ReprlabError)


def test_given_test_set_and_ood_eval():
    store, u, _ = planted(n=400, d=16, layers=2, strength=(0.0, 4.0), seed=0)
    other, _, _ = planted(n=120, d=16, layers=2, strength=(0.0, 4.0), seed=0)
    # same direction u (same seed) but fresh rows: a held-out test set and an OOD set
    res = sweep(store, probes=["logistic", "mass-mean-iid"], test=other, evals={"ood": other},
                progress=False, bootstrap=100)
    assert res.config["mode"] == "given-test"
    for r in res.rows:
        assert r["n_test"] == 120 and r["n_train"] + r["n_val"] == 400
        assert r["eval_ood_acc"] == pytest.approx(r["test_acc"])  # same rows, same probe
    top = next(r for r in res.rows if r["site"] == "layers.1" and r["family"] == "logistic")
    assert top["test_acc"] > 0.9
    sets = {p["set"] for p in res.predictions}
    assert sets == {"test", "ood"}
