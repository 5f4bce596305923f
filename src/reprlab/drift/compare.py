"""Compare many clouds at once, each distance with its split-half noise floor.

``compare(clouds [K, n, d], pairs, measures)`` evaluates every requested measure on every pair
``(i, j)`` of clouds that hold the same ``n`` inputs (points) in the same order: layers of one
checkpoint, or one layer at several checkpoints. Beside each unpaired distance it reports the
sampling noise floor (two random halves of one cloud are never at distance 0): the inputs are
split in two at random ``n_splits`` times; the floor of cloud ``k`` is the distance between its
two halves, and the pair value at the same sample size (``half``: cloud ``i`` on one half
against cloud ``j`` on the other) is what the floor should be compared with. ``floor_points``
splits points instead of inputs (the same when every input gives one point; with all-token
clouds tokens of one text are correlated and the input split is the honest one).

Sinkhorn uses one absolute ε for all pairs and floors (``rel_eps`` × median squared distance
between points of the union), so that values are comparable across the matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reprlab.drift import ot
from reprlab.drift.measures import DISTANCES, Measured, is_paired, measure
from reprlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def shared_eps(clouds: torch.Tensor, rel_eps: float, n_sample: int = 1024, seed: int = 0) -> float:
    """``rel_eps`` × median squared distance between random points of the union of ``clouds``."""
    flat = clouds.reshape(-1, clouds.shape[-1])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(flat.shape[0], generator=g)[: 2 * n_sample]
    pts = flat[idx].double()
    half = pts.shape[0] // 2
    c = ot.sq_cost(pts[None, :half], pts[None, half:2 * half])[0]
    scale = float(c.median())
    if not scale > 0:
        raise DataError("all sampled points coincide (median squared distance 0); "
                        "pass an absolute --eps or check the inputs")
    return rel_eps * scale


def _chunks(n_pairs: int, n: int, m: int, max_bytes: float, elsize: int = 4) -> int:
    per_pair = 5 * n * m * elsize
    return max(1, int(max_bytes // per_pair))


def _sinkhorn_pairs(X, Y, pairs, eps, opts, max_bytes):
    """Debiased divergence for pairs (i of X, j of Y); self terms computed once per cloud."""
    kw = dict(eps=eps, tol=opts.get("tol", 1e-5), max_iter=opts.get("max_iter", 5000))
    n, m = X.shape[1], Y.shape[1]
    step = _chunks(len(pairs), n, m, max_bytes)

    def ent(A, B, idx_a, idx_b):
        vals, conv = [], []
        for s in range(0, len(idx_a), step):
            ia, ib = idx_a[s:s + step], idx_b[s:s + step]
            r = ot.sinkhorn(A[ia], B[ib], **kw)
            vals.append(r.entropic)
            conv.append(r.converged)
        return torch.cat(vals), torch.cat(conv)

    xi = sorted({i for i, _ in pairs})
    yj = sorted({j for _, j in pairs})
    sx, cx = ent(X, X, xi, xi)
    same = X is Y
    sy, cy = (sx, cx) if same and xi == yj else ent(Y, Y, yj, yj)
    self_x = dict(zip(xi, sx.tolist(), strict=True))
    self_y = dict(zip(yj, sy.tolist(), strict=True))
    conv_x = dict(zip(xi, cx.tolist(), strict=True))
    conv_y = dict(zip(yj, cy.tolist(), strict=True))
    cross, cc = ent(X, Y, [i for i, _ in pairs], [j for _, j in pairs])
    vals = torch.tensor([float(cross[k]) - 0.5 * (self_x[i] + self_y[j])
                         for k, (i, j) in enumerate(pairs)], dtype=torch.float64)
    conv = torch.tensor([bool(cc[k]) and conv_x[i] and conv_y[j]
                         for k, (i, j) in enumerate(pairs)])
    return Measured(vals, conv)


def pair_values(name: str, X: torch.Tensor, Y: torch.Tensor, pairs: Sequence[tuple[int, int]],
                eps: float | None = None, max_bytes: float = 1 << 30, **opts) -> Measured:
    """``name`` between ``X[i]`` and ``Y[j]`` for each ``(i, j)`` in ``pairs`` -> ``[P]``."""
    pairs = list(pairs)
    if name == "sinkhorn":
        if eps is None:
            raise ConfigError("sinkhorn pairs need an absolute eps (see shared_eps)")
        return _sinkhorn_pairs(X, Y, pairs, eps, opts, max_bytes)
    step = _chunks(len(pairs), X.shape[1], Y.shape[1], max_bytes)
    vals, conv = [], []
    for s in range(0, len(pairs), step):
        chunk = pairs[s:s + step]
        r = measure(name, X[[i for i, _ in chunk]], Y[[j for _, j in chunk]], **opts)
        vals.append(r.values.double())
        conv.append(r.converged)
    return Measured(torch.cat(vals), torch.cat(conv))


def input_halves(groups: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point indices of two random halves of the *inputs* (groups), truncated to equal size."""
    uniq = groups.unique()
    g = torch.Generator().manual_seed(seed)
    perm = uniq[torch.randperm(len(uniq), generator=g)]
    first = torch.isin(groups, perm[: len(uniq) // 2])
    a, b = first.nonzero().squeeze(1), (~first).nonzero().squeeze(1)
    h = min(len(a), len(b))
    return a[:h], b[:h]


def point_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    h = n // 2
    return perm[:h].sort().values, perm[h:2 * h].sort().values


@dataclass
class Comparison:
    """Results of :func:`compare` for one measure over ``pairs``.

    ``value [P]``: on the full clouds; ``converged [P]``. Unpaired distances also carry
    ``half [P]`` (cloud i on one input half vs cloud j on the other, mean over splits),
    ``floor [P]`` (mean of the two clouds' split-half floors), ``floor_sd [P]``,
    ``floor_points [P]`` and ``cloud_floor [K]``. Paired measures carry ``half_sd [P]``, the
    spread of the value over input halves.
    """

    measure: str
    pairs: list[tuple[int, int]]
    value: torch.Tensor
    converged: torch.Tensor
    half: torch.Tensor | None = None
    half_sd: torch.Tensor | None = None
    floor: torch.Tensor | None = None
    floor_sd: torch.Tensor | None = None
    floor_points: torch.Tensor | None = None
    cloud_floor: torch.Tensor | None = None
    eps: float | None = None
    extra: dict = field(default_factory=dict)

    def rows(self, labels: Sequence[str]) -> list[dict]:
        out = []
        for k, (i, j) in enumerate(self.pairs):
            row = {"measure": self.measure, "a": labels[i], "b": labels[j],
                   "value": float(self.value[k]), "converged": bool(self.converged[k])}
            for name in ("half", "half_sd", "floor", "floor_sd", "floor_points"):
                t = getattr(self, name)
                if t is not None:
                    row[name] = float(t[k])
            if self.floor is not None and self.half is not None:
                row["excess"] = float(self.half[k] - self.floor[k])
            out.append(row)
        return out


def compare(clouds: torch.Tensor, pairs: Sequence[tuple[int, int]], measures: Sequence[str],
            groups: torch.Tensor | None = None, *, n_splits: int = 2, seed: int = 0,
            rel_eps: float = 0.1, eps: float | None = None, floors: bool = True,
            max_bytes: float = 1 << 30, **opts) -> dict[str, Comparison]:
    """Every measure on every pair of ``clouds [K, n, d]``, with split-half floors.

    ``groups [n]``: the input (row) each point comes from (``None``: one point per input).
    """
    K, n, _ = clouds.shape
    pairs = [(int(i), int(j)) for i, j in pairs]
    if n < 8:
        raise DataError(f"clouds of {n} points are too small to compare with a noise floor; "
                        "sample at least 8 points (more than 200 is better)")
    groups = torch.arange(n) if groups is None else groups
    if len(groups) != n:
        raise DataError(f"groups has {len(groups)} entries for clouds of {n} points")
    if any("sinkhorn" == m for m in measures) and eps is None:
        eps = shared_eps(clouds, rel_eps, seed=seed)
    splits = [input_halves(groups, seed + s) for s in range(n_splits)] if floors else []
    psplits = [point_halves(n, seed + 1000 + s) for s in range(n_splits)] if floors else []
    out: dict[str, Comparison] = {}
    for name in measures:
        kw = dict(eps=eps, max_bytes=max_bytes, **opts)
        full = pair_values(name, clouds, clouds, pairs, **kw)
        comp = Comparison(name, pairs, full.values, full.converged,
                          eps=eps if name == "sinkhorn" else None)
        if floors and is_paired(name):
            halves = []
            for a, b in splits:
                halves.append(pair_values(name, clouds[:, a], clouds[:, a], pairs, **kw).values)
                halves.append(pair_values(name, clouds[:, b], clouds[:, b], pairs, **kw).values)
            h = torch.stack(halves)
            comp.half, comp.half_sd = h.mean(0), h.std(0)
        elif floors:
            cf, hv, cfp = [], [], []
            self_pairs = [(k, k) for k in range(K)]
            conv = comp.converged.clone()
            for (a, b), (pa, pb) in zip(splits, psplits, strict=True):
                fa = pair_values(name, clouds[:, a], clouds[:, b], self_pairs, **kw)
                hh = pair_values(name, clouds[:, a], clouds[:, b], pairs, **kw)
                fp = pair_values(name, clouds[:, pa], clouds[:, pb], self_pairs, **kw)
                cf.append(fa.values)
                hv.append(hh.values)
                cfp.append(fp.values)
                conv &= hh.converged
            cloud_floor = torch.stack(cf)                       # [S, K]
            pair_floor = torch.stack([(cloud_floor[:, i] + cloud_floor[:, j]) / 2
                                      for i, j in pairs], dim=1)  # [S, P]
            cfp_t = torch.stack(cfp)
            comp.cloud_floor = cloud_floor.mean(0)
            comp.floor = pair_floor.mean(0)
            comp.floor_sd = pair_floor.std(0) if n_splits > 1 else torch.zeros(len(pairs))
            comp.floor_points = torch.stack([(cfp_t[:, i] + cfp_t[:, j]) / 2
                                             for i, j in pairs], dim=1).mean(0)
            comp.half = torch.stack(hv).mean(0)
            comp.extra["floor_converged"] = bool(conv.all())
        out[name] = comp
        if not bool(comp.converged.all()):
            logger.warning("%s: %d of %d pairs did not converge (see 'converged' in the "
                           "results); raise max_iter or rel_eps", name,
                           int((~comp.converged).sum()), len(pairs))
    return out


def matrix(comp: Comparison, K: int, what: str = "value", diagonal: float = 0.0) -> torch.Tensor:
    """Fill a symmetric ``[K, K]`` matrix from pair values (``what``: value/half/floor...)."""
    m = torch.full((K, K), float("nan"), dtype=torch.float64)
    vals = getattr(comp, what)
    for k, (i, j) in enumerate(comp.pairs):
        m[i, j] = m[j, i] = float(vals[k])
    if comp.measure == "cka" and what == "value":
        diagonal = 1.0
    if what == "value":
        m.fill_diagonal_(diagonal)
    return m


__all__ = ["DISTANCES", "Comparison", "compare", "matrix", "pair_values", "shared_eps"]
