"""compare(): shared per-cloud terms give the same numbers as measuring each pair alone."""

from __future__ import annotations

import pytest
import torch

from reprlab.drift import ot
from reprlab.drift.compare import compare, input_halves, point_halves, shared_eps
from reprlab.drift.measures import measure


@pytest.fixture
def clouds():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 60, 6, generator=g)
    base[1] += 0.5
    base[2] *= 1.5
    return base


def _direct(name, x, y, **kw):
    return float(measure(name, x[None], y[None], **kw).values[0])


@pytest.mark.parametrize("name", ["sinkhorn", "bures", "sliced", "cka"])
def test_compare_matches_pair_by_pair(clouds, name):
    pairs = [(0, 1), (0, 2), (1, 2)]
    groups = torch.arange(60)
    res = compare(clouds, pairs, [name], groups, n_splits=2, seed=3, tol=1e-6)[name]
    eps = shared_eps(clouds, 0.1, seed=3) if name == "sinkhorn" else None
    kw = {"eps": eps, "tol": 1e-6} if eps else {}
    for k, (i, j) in enumerate(pairs):
        assert float(res.value[k]) == pytest.approx(_direct(name, clouds[i], clouds[j], **kw),
                                                    rel=1e-5, abs=1e-9)
    if name == "cka":  # paired: the value on each input half, averaged over halves and splits
        halves = []
        for s in range(2):
            for h in input_halves(groups, 3 + s):
                halves.append(_direct(name, clouds[0][h], clouds[1][h]))
        assert float(res.half[0]) == pytest.approx(sum(halves) / 4, rel=1e-9)
        return
    # floors: cloud k on input half a vs half b, for both splits, averaged over the two clouds
    floors = []
    for s in range(2):
        a, b = input_halves(groups, 3 + s)
        floors.append([_direct(name, clouds[k][a], clouds[k][b], **kw) for k in range(3)])
    f = torch.tensor(floors).mean(0)
    assert res.cloud_floor.double().tolist() == pytest.approx(f.tolist(), rel=1e-5, abs=1e-9)
    pa, pb = point_halves(60, 3 + 1000)
    fp0 = _direct(name, clouds[0][pa], clouds[0][pb], **kw)
    assert res.floor_points is not None and fp0 >= 0


def test_bures_from_stats_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 200, 5, generator=g, dtype=torch.float64)
    y = y @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 1.0
    sx, sy = (torch.cov(t.T, correction=0) for t in (x, y))
    w, q = torch.linalg.eigh(sx)
    r = (q * w.sqrt()) @ q.T
    mid = torch.linalg.eigvalsh(r @ sy @ r).clamp_min(0).sqrt().sum()
    want = ((x.mean(0) - y.mean(0)) ** 2).sum() + sx.trace() + sy.trace() - 2 * mid
    assert float(ot.bures_wasserstein(x, y)) == pytest.approx(float(want), rel=1e-9)
    # d > n: the centred-points root gives the same value as the covariance root
    a, b = x[:4], y[:4]
    cov = ot.bures_from_stats(ot.gaussian_stats(a, True), ot.gaussian_stats(b, True))
    pts = ot.bures_from_stats(ot.gaussian_stats(a, False), ot.gaussian_stats(b, False))
    assert float(cov[0]) == pytest.approx(float(pts[0]), rel=1e-6)


def test_progress_bar_counts_every_pair_and_self_term(clouds, monkeypatch):
    import importlib

    cmp = importlib.import_module("reprlab.drift.compare")

    seen = {}

    class Bar:
        def __init__(self, total, desc, **kw):
            self.total, self.n, self.desc = total, 0, desc
            seen[desc] = self

        def update(self, k):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(cmp, "tqdm", Bar)
    compare(clouds, [(0, 1), (0, 2), (1, 2)], ["sinkhorn", "cka"], n_splits=2, progress=True,
            desc="x: ")
    # sinkhorn: 3 full pairs + 3 self terms; per split 3 floors + 3 half pairs + 3 point floors,
    # each with 6 self terms (3 clouds x 2 halves), computed once
    assert seen["x: sinkhorn"].total == seen["x: sinkhorn"].n == 6 + 2 * (9 + 12)
    assert seen["x: cka"].total == seen["x: cka"].n == 3 + 2 * 6
