"""Paired measures: CKA against the direct HSIC formula, Procrustes and displacement."""

from __future__ import annotations

import pytest
import torch

from reprlab.drift.similarity import linear_cka, paired_displacement, procrustes_distance


def cka_direct(x, y):
    """Kornblith et al. 2019: HSIC with centring matrix H on linear Gram matrices."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, ll = x @ x.T, y @ y.T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return float(hsic(k, ll) / torch.sqrt(hsic(k, k) * hsic(ll, ll)))


@pytest.mark.parametrize("n,d1,d2", [(40, 10, 7), (12, 30, 25)])
def test_cka_equals_direct_formula(n, d1, d2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, d1, generator=g, dtype=torch.float64)
    y = x[..., :1].repeat(1, 1, d2) * 0.5 + torch.randn(3, n, d2, generator=g, dtype=torch.float64)
    ours = linear_cka(x, y)
    for i in range(3):
        assert float(ours[i]) == pytest.approx(cka_direct(x[i], y[i]), rel=1e-10)


@pytest.mark.parametrize("n,d", [(60, 16), (10, 16)])
def test_rotated_copy_has_cka_one_and_procrustes_zero(n, d):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    y = 2.5 * x @ q + 3.0
    assert float(linear_cka(x, y)) == pytest.approx(1.0, abs=1e-12)
    assert float(procrustes_distance(x, y)) == pytest.approx(0.0, abs=1e-10)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert float(procrustes_distance(x, z)) > 0.05
    assert float(paired_displacement(x, y)) > 1.0   # raw displacement is not invariant


def test_procrustes_equals_explicit_minimisation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / xc.norm(), yc / yc.norm()
    u, _, vh = torch.linalg.svd(yc.T @ xc)
    q = u @ vh                               # argmin_Q |X - Y Q|_F
    direct = float(((xc - yc @ q) ** 2).sum())
    assert float(procrustes_distance(x, y)) == pytest.approx(direct, rel=1e-10)


def test_paired_displacement_value():
    x = torch.zeros(4, 3)
    y = torch.tensor([[3.0, 4, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert float(paired_displacement(x, y)) == pytest.approx((5 + 1 + 0 + 1) / 4)
    assert float(paired_displacement(x, y, squared=True)) == pytest.approx((25 + 1 + 0 + 1) / 4)


def test_paired_needs_same_rows():
    from reprlab.errors import DataError

    with pytest.raises(DataError, match="same inputs"):
        linear_cka(torch.zeros(5, 3), torch.zeros(6, 3))
