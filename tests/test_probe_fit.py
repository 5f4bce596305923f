"""The batched logistic fit's solver paths against scikit-learn, and its stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprlab.probes.fitters import L2_GRID, fit_family, select_setting
from reprlab.probes.logistic import fit_logistic, l2_from_C, linear_logits, prepare
from reprlab.probes.precondition import eigen_rotation, top_eigen

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402


def correlated(n, d, layers=1, seed=0, signal=1.0):
    """Standardised rows with a decaying spectrum and a planted direction."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    scales = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    out = []
    for _ in range(layers):
        A = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
        X = (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ A
        X = X + signal * (X @ u).std() * (2 * y[:, None] - 1) * u
        out.append((X - X.mean(0)) / X.std(0))
    return torch.stack(out), y


def true_gradient(X, y, w, b, l2):
    """Gradient of mean log-loss + l2/2 |w|^2 in the original coordinates."""
    r = torch.sigmoid(X @ w + b) - y.to(X.dtype)
    return torch.cat([X.T @ r / len(y) + l2 * w, r.mean()[None]])


@pytest.mark.parametrize("kind", ["eigen", "lowrank", "none"])
def test_every_preconditioner_matches_sklearn_at_the_same_C(kind):
    X, y = correlated(300, 40, seed=1)
    C = 0.5
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=20_000).fit(X[0].numpy(), y.numpy())
    fit = fit_logistic(X, y, n_classes=2, l2=l2_from_C(C, 300), tol=1e-8, max_iter=5000,
                       precondition=kind, rank=8)
    assert bool(fit.converged.all()) and fit.info["preconditioner"] == kind
    assert np.allclose(fit.weight[0, 0, 0].numpy(), ref.coef_[0], atol=1e-5)
    assert abs(float(fit.bias[0, 0, 0]) - ref.intercept_[0]) < 1e-5


def test_fewer_rows_than_columns_solves_in_the_row_space():
    # n << d (the 30-row probes on wide models): the eigenbasis comes from the n x n kernel
    X, y = correlated(30, 200, seed=2)
    Xr, lam, V = eigen_rotation(X)
    assert Xr.shape == (1, 30, 30) and V.shape == (1, 200, 30)
    torch.testing.assert_close(Xr, X @ V)  # the same rows, rotated
    for C in (0.1, 10.0):
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=50_000).fit(X[0].numpy(), y.numpy())
        fit = fit_logistic(X, y, n_classes=2, l2=l2_from_C(C, 30), tol=1e-9, max_iter=5000)
        assert bool(fit.converged.all())
        assert np.allclose(fit.weight[0, 0, 0].numpy(), ref.coef_[0], atol=1e-5), C
        g = true_gradient(X[0], y, fit.weight[0, 0, 0], fit.bias[0, 0, 0], l2_from_C(C, 30))
        assert float(g.abs().max()) < 1e-9


def test_top_eigen_finds_the_leading_eigenpairs():
    X, _ = correlated(400, 60, seed=3)
    U, lam, tail = top_eigen(X, 10, iters=4)
    ref = torch.linalg.eigvalsh(X[0].T @ X[0] / 400).flip(0)
    torch.testing.assert_close(lam[0], ref[:10], rtol=1e-3, atol=1e-6)
    # the scale of the unresolved directions is the 10th eigenvalue: it bounds all of theirs
    assert abs(float(tail[0]) - float(ref[9])) < 1e-3 * float(ref[9])
    assert float(tail[0]) >= float(ref[10])
    torch.testing.assert_close(U[0].T @ U[0], torch.eye(10, dtype=X.dtype), atol=1e-8, rtol=0)


def test_stopping_rule_holds_in_the_original_coordinates_and_packing_changes_nothing():
    X, y = correlated(500, 60, layers=3, seed=4)
    l2 = torch.tensor(L2_GRID, dtype=torch.float64)
    Y = torch.stack([y, y.flip(0)]).repeat_interleave(len(l2), 0)
    l2q = l2.repeat(2)
    tol = 1e-4
    packed = fit_logistic(X, Y, n_classes=2, l2=l2q, tol=tol)
    whole = fit_logistic(X, Y, n_classes=2, l2=l2q, tol=tol, compact=False)
    assert bool(packed.converged.all()) and bool(whole.converged.all())
    steps = packed.info["steps"]
    assert int(steps.max()) == packed.iterations and int(steps.min()) < packed.iterations // 2
    for layer in range(3):
        for p in range(Y.shape[0]):
            g = true_gradient(X[layer], Y[p], packed.weight[layer, p, 0],
                              packed.bias[layer, p, 0], float(l2q[p]))
            assert float(g.abs().max()) < tol, (layer, p)
    # the same optimum to within the tolerance's reach, packed or not
    torch.testing.assert_close(packed.weight, whole.weight, atol=5e-3, rtol=0)


def _task_and_control(n, d, seed=3):
    """Two layers of ``correlated`` rows; task and random-label control at every strength."""
    X, y = correlated(n, d, layers=2, seed=seed)
    ctl = y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    Y = torch.stack([y, ctl]).repeat_interleave(len(L2_GRID), 0)
    return X, Y, torch.tensor(L2_GRID, dtype=torch.float64).repeat(2)


def _worst_gradient(X, Y, l2, fit):
    """The largest gradient entry over every problem, in float64 in the original coordinates."""
    return max(float(true_gradient(X[i], Y[p], fit.weight[i, p, 0].double(),
                                   fit.bias[i, p, 0].double(), float(l2[p])).abs().max())
               for i in range(X.shape[0]) for p in range(len(l2)))


def test_few_float32_rows_in_many_dims_converge_in_the_original_coordinates():
    """30 float32 rows in 4,096 dims, solved in their row space, at tol 1e-5. Before, some
    of these problems ran to the 500-iteration cap: convergence was screened by the rotated
    gradient's largest entry, whose float32 rounding (the rotated rows are sqrt(4096 / 29)
    times larger) stayed above ``tol`` where the original coordinates met it. They now
    converge in float32, with no float64 finish."""
    X, Y, l2 = _task_and_control(30, 4096)
    fit = fit_logistic(X.float(), Y, n_classes=2, l2=l2, tol=1e-5, max_iter=500)
    assert bool(fit.converged.all()) and fit.iterations < 60
    assert fit.info["preconditioner"] == "eigen" and "polished" not in fit.info
    assert _worst_gradient(X, Y, l2, fit) < 1.2e-5


@pytest.mark.parametrize("n, d", [(30, 4096), (200, 256), (400, 128)])
def test_float32_problems_that_stall_are_finished_in_float64(n, d):
    """float32 rows at tol 1e-7, in the row space (30 rows in 4,096 dims, 200 in 256) and in
    the eigenbasis (400 in 128). Before, some of these problems ran to the 500-iteration cap without
    converging: float32 rounding sets a floor above ``tol``. Now the problems that stall
    there are finished in float64 and every one meets ``tol`` in the original coordinates,
    recomputed here in float64."""
    X, Y, l2 = _task_and_control(n, d)
    fit = fit_logistic(X.float(), Y, n_classes=2, l2=l2, tol=1e-7, max_iter=500)
    assert bool(fit.converged.all()) and fit.iterations < 250
    assert fit.info["polished"] > 0 and not bool(fit.info["stalled"].any())
    assert _worst_gradient(X, Y, l2, fit) < 1.2e-7
    assert fit.weight.dtype == torch.float32
    # without the float64 finish the stalled problems stop early, flagged, not at the cap
    alone = fit_logistic(X.float(), Y, n_classes=2, l2=l2, tol=1e-7, max_iter=500,
                         polish=False)
    stalled = alone.info["stalled"]
    assert bool(stalled.any()) and not bool((alone.converged & stalled).any())
    assert bool(alone.converged[~stalled].all()) and alone.iterations < 500
    assert _worst_gradient(X, Y, l2, alone) > 1e-7


def test_curves_of_packed_problems_stay_flat_after_they_converge():
    X, y = correlated(400, 30, layers=2, seed=5)
    l2 = torch.tensor([1e-4, 1.0], dtype=torch.float64)
    fit = fit_logistic(X, y.expand(2, -1), n_classes=2, l2=l2, tol=1e-6,
                       monitor=(X[:, :100], y[:100]))
    T = fit.iterations + 1
    for name in ("train_loss", "train_acc", "eval_loss", "eval_acc"):
        assert fit.curves[name].shape == (2, 2, T)
    steps = fit.info["steps"]
    for layer in range(2):
        for p in range(2):
            s = int(steps[layer, p])
            c = fit.curves["train_loss"][layer, p]
            assert torch.all(c[s:] == c[s])  # flat once converged
            assert float(c[0]) == pytest.approx(np.log(2), abs=1e-9)  # starts at w = 0
    assert int(steps[0, 1]) < int(steps[0, 0])  # strong L2 converges first


def test_controls_are_fitted_at_the_strength_the_task_chose():
    X, y = correlated(600, 24, layers=2, seed=6, signal=0.6)
    tr, va = torch.arange(400), torch.arange(400, 600)
    ctl = y[torch.randperm(600, generator=torch.Generator().manual_seed(0))]
    Y = torch.stack([y, ctl])
    fit = fit_family("logistic", X[:, tr], Y[:, tr], n_classes=2, scale=torch.ones(2, 24),
                     X_val=X[:, va], Y_val=Y[:, va], options={"tol": 1e-9, "control_grid": "chosen"})
    assert fit.info["control_at"] == "chosen strength"
    W = fit.params["weight"]  # [L, P, H, 1, d]
    h = select_setting(linear_logits(X[:, va], W[:, 0], fit.params["bias"][:, 0]), y[va])
    n = len(tr)
    for layer in range(2):
        # every grid slot of the control holds the one control fit
        assert torch.equal(W[layer, 1, 0], W[layer, 1, -1])
        C = 1.0 / (L2_GRID[int(h[layer])] * n)
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=20_000).fit(
            X[layer, tr].numpy(), ctl[tr].numpy())
        assert np.allclose(W[layer, 1, 0, 0].numpy(), ref.coef_[0], atol=1e-5)
        for j, l2 in enumerate(L2_GRID):  # and the task at every strength
            ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=20_000).fit(
                X[layer, tr].numpy(), y[tr].numpy())
            assert np.allclose(W[layer, 0, j, 0].numpy(), ref.coef_[0], atol=1e-5), (layer, l2)
    both = fit_family("logistic", X[:, tr], Y[:, tr], n_classes=2, scale=torch.ones(2, 24),
                      X_val=X[:, va], Y_val=Y[:, va],
                      options={"tol": 1e-9})  # default: controls at every strength
    assert not torch.equal(both.params["weight"][0, 1, 0], both.params["weight"][0, 1, -1])
    torch.testing.assert_close(both.params["weight"][:, 0], W[:, 0], atol=1e-5, rtol=0)


def test_prepared_features_are_reused_and_give_the_same_fit():
    X, y = correlated(200, 16, layers=2, seed=7)
    prep = prepare(X)
    a = fit_logistic(prep, y, n_classes=2, l2=1e-2, tol=1e-8)
    b = fit_logistic(X, y, n_classes=2, l2=1e-2, tol=1e-8)
    torch.testing.assert_close(a.weight, b.weight)
    with pytest.raises(ValueError, match="unknown preconditioner"):
        fit_logistic(X, y, n_classes=2, precondition="cholesky")


def test_problems_converged_at_the_start_need_no_iteration():
    """Zero features and balanced labels: the gradient is zero at the start, every problem is
    done before the first step, and the packed batch is the full one."""
    X = torch.zeros(2, 40, 8)
    Y = torch.tensor([0, 1] * 20)
    fit = fit_logistic(X, Y, n_classes=2, l2=0.1, tol=1e-4)
    assert bool(fit.converged.all())
    assert torch.equal(fit.weight, torch.zeros_like(fit.weight))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fused_line_search_pass_gives_the_same_fit(monkeypatch, n_classes):
    # layers too big for the caches fuse the direction's logits with the next gradient in one
    # sweep over the rows; forced on for small data here, it must change nothing but speed
    import reprlab.probes.logistic as LG

    monkeypatch.setattr(LG, "NEWTON_AFTER", 10**9)  # (wide layers never use it)
    X, y = correlated(600, 50, layers=2, seed=6)
    Y = torch.stack([y, y.flip(0)]) if n_classes == 2 else torch.stack([y + (y.flip(0) & y)])
    kw = {"n_classes": n_classes, "l2": 1e-3, "tol": 1e-7, "max_iter": 2000,
          "precondition": "lowrank", "rank": 8}
    plain = fit_logistic(X, Y, **kw)
    calls = []
    real = LG._Objective._fused_pass
    monkeypatch.setattr(LG, "FUSE_BYTES", 0)
    monkeypatch.setattr(LG, "FUSE_BLOCK", 64 * 50 * 8)  # blocks of 64 rows
    monkeypatch.setattr(LG._Objective, "_fused_pass",
                        lambda self, *a: calls.append(1) or real(self, *a))
    fused = fit_logistic(X, Y, **kw)
    assert calls and bool(fused.converged.all())
    assert fused.iterations == plain.iterations
    torch.testing.assert_close(fused.weight, plain.weight, atol=1e-9, rtol=0)
    torch.testing.assert_close(fused.bias, plain.bias, atol=1e-9, rtol=0)


def test_logits_are_the_same_in_either_product_orientation():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 40, 16, generator=g, dtype=torch.float64)
    for P, K in ((1, 1), (3, 1), (1, 3), (4, 1), (2, 3)):  # W X^T up to 3 rows, X W^T above
        W = torch.randn(3, P, K, 16, generator=g, dtype=torch.float64)
        b = torch.randn(3, P, K, generator=g, dtype=torch.float64)
        ref = torch.einsum("lnd,lpkd->lpnk", X, W) + b.unsqueeze(-2)
        torch.testing.assert_close(linear_logits(X, W, b), ref, atol=1e-12, rtol=0)


def test_exact_newton_tail_cuts_iterations_and_matches_sklearn(monkeypatch):
    # weakly regularised, nearly separable problems converge slowly under the eigenbasis model;
    # once it pays, the exact Hessians of the problems left take over and finish in a few steps
    import reprlab.probes.logistic as LG
    from reprlab.probes import precondition as PC

    X, y = correlated(300, 100, layers=2, seed=7, signal=0.5)
    C = 100.0
    l2 = l2_from_C(C, 300)
    builds = []
    real = PC.ExactNewton.build.__func__
    monkeypatch.setattr(PC.ExactNewton, "build",
                        classmethod(lambda cls, *a: builds.append(1) or real(cls, *a)))
    fit = fit_logistic(X, y, n_classes=2, l2=l2, tol=1e-6, max_iter=5000)
    assert builds, "the exact-Hessian model never took over"
    monkeypatch.setattr(LG, "NEWTON_AFTER", 10**9)
    slow = fit_logistic(X, y, n_classes=2, l2=l2, tol=1e-6, max_iter=5000)
    assert bool(fit.converged.all()) and bool(slow.converged.all())
    assert fit.iterations + 5 <= slow.iterations, (fit.iterations, slow.iterations)  # 17, 26
    for layer in range(2):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=50_000).fit(X[layer].numpy(),
                                                                    y.numpy())
        # weak regularisation: a 1e-6 gradient leaves weights ~1e-3 from the exact optimum
        assert np.allclose(fit.weight[layer, 0, 0].numpy(), ref.coef_[0], atol=5e-3)
        g = true_gradient(X[layer], y, fit.weight[layer, 0, 0], fit.bias[layer, 0, 0], l2)
        assert float(g.abs().max()) < 1e-6
