"""Batched OT maths against POT, and the invariances the drift measures must have."""

from __future__ import annotations

import math

import pytest
import torch

from reprlab.drift import ot as rot

pot = pytest.importorskip("ot")


def clouds(B=3, n=120, m=90, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g, dtype=dtype)
    y = 1.3 * torch.randn(B, m, d, generator=g, dtype=dtype) + 0.4
    return x, y


def uniform(n, dtype=torch.float64):
    return torch.full((n,), 1.0 / n, dtype=dtype)


def pot_entropic(x, y, eps):
    """POT's log-domain plan; returns ⟨γ,M⟩ (sinkhorn2) and ⟨γ,M⟩ + ε KL(γ|a⊗b)."""
    a, b = uniform(len(x)), uniform(len(y))
    M = pot.dist(x, y)
    cost = float(pot.sinkhorn2(a, b, M, eps, method="sinkhorn_log", stopThr=1e-13,
                               numItermax=20000))
    P = pot.sinkhorn(a, b, M, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
    kl = float((P * (P / (a[:, None] * b[None])).log()).sum())
    return cost, cost + eps * kl


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("method", ["stabilized", "log"])
@pytest.mark.parametrize("rel_eps", [0.05, 0.2])
def test_sinkhorn_matches_pot(method, rel_eps):
    x, y = clouds()
    r = rot.sinkhorn(x, y, rel_eps=rel_eps, tol=1e-10, max_iter=20000, method=method)
    assert r.converged.all()
    for i in range(x.shape[0]):
        eps = float(r.eps[i])
        assert math.isclose(eps, rel_eps * float(pot.dist(x[i], y[i]).median()), rel_tol=1e-12)
        cost, ent = pot_entropic(x[i], y[i], eps)
        assert rel(float(r.cost[i]), cost) < 1e-4
        assert rel(float(r.entropic[i]), ent) < 1e-4


def test_sinkhorn_float32_small_eps_is_stable():
    x, y = clouds(B=2, dtype=torch.float32)
    r = rot.sinkhorn(x, y, rel_eps=0.005, tol=1e-4, max_iter=20000)
    assert torch.isfinite(r.cost).all() and r.converged.all()
    cost, _ = pot_entropic(x[0].double(), y[0].double(), float(r.eps[0]))
    assert rel(float(r.cost[0]), cost) < 1e-3


def test_sinkhorn_divergence_matches_pot_terms():
    x, y = clouds(B=2, n=100, m=100)
    d = rot.sinkhorn_divergence(x, y, rel_eps=0.1, tol=1e-10, max_iter=20000)
    assert d.converged.all()
    for i in range(2):
        eps = float(d.eps[i])
        cxy, exy = pot_entropic(x[i], y[i], eps)
        cxx, exx = pot_entropic(x[i], x[i], eps)
        cyy, eyy = pot_entropic(y[i], y[i], eps)
        assert rel(float(d.divergence_cost[i]), cxy - 0.5 * (cxx + cyy)) < 1e-4
        assert rel(float(d.divergence[i]), exy - 0.5 * (exx + eyy)) < 1e-4
        assert float(d.divergence[i]) > 0


def test_non_convergence_is_reported(caplog):
    x, y = clouds(B=2)
    with caplog.at_level("WARNING"):
        r = rot.sinkhorn(x, y, rel_eps=0.001, tol=1e-12, max_iter=3)
    assert not r.converged.any()
    assert (r.n_iter == 3).all()
    assert "did not converge" in caplog.text


def test_self_distance_zero_and_split_half_positive():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64)
    same = rot.sinkhorn_divergence(x, x, rel_eps=0.1, tol=1e-9)
    assert abs(float(same.divergence)) < 1e-8
    floor = rot.sinkhorn_divergence(x[:200], x[200:], rel_eps=0.1, tol=1e-9)
    assert float(floor.divergence) > 1e-3
    assert float(rot.emd2(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(rot.emd2(x[:200], x[200:])) > 0.1


@pytest.mark.parametrize("m", [60, 45])
def test_emd_matches_pot(m):
    x, y = clouds(B=2, n=60, m=m)
    ours = rot.emd2(x, y)
    for i in range(2):
        ref = float(pot.emd2(uniform(60), uniform(m), pot.dist(x[i], y[i])))
        assert rel(float(ours[i]), ref) < 1e-9


def test_emd_refuses_large_clouds():
    from reprlab.errors import DataError

    x = torch.zeros(50, 2)
    with pytest.raises(DataError, match="too large for exact EMD"):
        rot.emd2(x, x, max_points=10)


@pytest.mark.parametrize("m", [120, 90])
def test_sliced_matches_pot(m):
    x, y = clouds(B=2, n=120, m=m)
    th = rot.random_directions(8, 40, seed=3, dtype=torch.float64)
    ours = rot.sliced_wasserstein(x, y, directions=th)
    for i in range(2):
        ref = float(pot.sliced_wasserstein_distance(x[i], y[i], projections=th)) ** 2
        assert rel(float(ours[i]), ref) < 1e-9


@pytest.mark.parametrize("n", [200, 5])
def test_bures_matches_pot(n):
    from ot.gaussian import bures_wasserstein_distance

    x, y = clouds(B=2, n=n, m=n + 3)
    ours = rot.bures_wasserstein(x, y)
    for i in range(2):
        cx = torch.cov(x[i].T, correction=0)
        cy = torch.cov(y[i].T, correction=0)
        ref = float(bures_wasserstein_distance(x[i].mean(0), y[i].mean(0), cx, cy)) ** 2
        assert rel(float(ours[i]), ref) < 1e-6


def test_batched_equals_one_by_one():
    x, y = clouds(B=4, n=50, m=50, dtype=torch.float32)
    batch = rot.sinkhorn(x, y, rel_eps=0.1, tol=1e-6)
    for i in range(4):
        one = rot.sinkhorn(x[i], y[i], rel_eps=0.1, tol=1e-6)
        assert float(one.cost) == pytest.approx(float(batch.cost[i]), rel=1e-5)
    # chunked iteration (how a CPU runs large pairs) gives the same pairs in the same order
    for chunk in (1, 3):
        part = rot.sinkhorn(x, y, rel_eps=0.1, tol=1e-6, chunk=chunk)
        torch.testing.assert_close(part.cost, batch.cost, rtol=1e-5, atol=0)
        assert torch.equal(part.converged, batch.converged) and part.f.shape == batch.f.shape


def test_squared_euclidean_ot_is_not_rotation_invariant_but_shared_basis_is_faithful():
    """A separate PCA per cloud changes distances; one PCA on the union keeps them."""
    from reprlab.drift.basis import fit_shared_pca, project

    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 5, generator=g, dtype=torch.float64) * torch.tensor([5, 3, 2, 1, .5])
    q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64)).Q
    y = x @ q
    raw = float(rot.emd2(x, y))
    mean, comps = fit_shared_pca([x, y], 5)
    shared = float(rot.emd2(project(x, mean, comps), project(y, mean, comps)))
    assert shared == pytest.approx(raw, rel=1e-9)
    mx, cx = fit_shared_pca([x], 5)
    my, cy = fit_shared_pca([y], 5)
    separate = float(rot.emd2(project(x, mx, cx), project(y, my, cy)))
    assert abs(separate - raw) > 0.1 * raw
