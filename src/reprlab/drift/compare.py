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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

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


class _Cache:
    """Per-cloud terms shared by the pairs of one comparison: Sinkhorn self terms OT(x, x) and
    Gaussian statistics, keyed by ``(tag, cloud index)`` where the tag names the sample of
    points (``"full"``, ``"a0"``: input half a of split 0, ...)."""

    def __init__(self) -> None:
        self.values: dict = {}


def _sinkhorn_pairs(X, Y, pairs, eps, opts, max_bytes, tags=(None, None), cache=None,
                    tick=None):
    """Debiased divergence for pairs (i of X, j of Y); self terms computed once per cloud."""
    kw = dict(eps=eps, tol=opts.get("tol", 1e-5), max_iter=opts.get("max_iter", 5000))
    n, m = X.shape[1], Y.shape[1]
    step = _chunks(len(pairs), n, m, max_bytes)
    cache = cache if cache is not None else _Cache()
    tx, ty = tags if tags != (None, None) else (id(X), id(Y))

    def ent(A, B, idx_a, idx_b):
        vals, conv = [], []
        for s in range(0, len(idx_a), step):
            ia, ib = idx_a[s:s + step], idx_b[s:s + step]
            r = ot.sinkhorn(A[ia], B[ib], **kw)
            vals.append(r.entropic)
            conv.append(r.converged)
            if tick is not None:
                tick(len(ia))
        return torch.cat(vals), torch.cat(conv)

    def selves(A, tag, idx):
        todo = sorted({k for k in idx if ("sk", tag, k) not in cache.values})
        if todo:
            v, c = ent(A, A, todo, todo)
            for k, vk, ck in zip(todo, v.tolist(), c.tolist(), strict=True):
                cache.values[("sk", tag, k)] = (vk, ck)
        return {k: cache.values[("sk", tag, k)] for k in idx}

    self_x = selves(X, tx, [i for i, _ in pairs])
    self_y = selves(Y, ty, [j for _, j in pairs])
    cross, cc = ent(X, Y, [i for i, _ in pairs], [j for _, j in pairs])
    vals = torch.tensor([float(cross[k]) - 0.5 * (self_x[i][0] + self_y[j][0])
                         for k, (i, j) in enumerate(pairs)], dtype=torch.float64)
    conv = torch.tensor([bool(cc[k]) and self_x[i][1] and self_y[j][1]
                         for k, (i, j) in enumerate(pairs)])
    return Measured(vals, conv)


def _bures_pairs(X, Y, pairs, tags=(None, None), cache=None, tick=None):
    """Bures–Wasserstein for pairs from per-cloud Gaussian statistics (one eigendecomposition
    per cloud, not per pair)."""
    cache = cache if cache is not None else _Cache()
    tx, ty = tags if tags != (None, None) else (id(X), id(Y))
    use_cov = X.shape[2] <= min(X.shape[1], Y.shape[1])

    def stats(A, tag, idx):
        todo = sorted({k for k in idx if ("bw", tag, k, use_cov) not in cache.values})
        for k in todo:
            cache.values[("bw", tag, k, use_cov)] = ot.gaussian_stats(A[k:k + 1], use_cov)
        return {k: cache.values[("bw", tag, k, use_cov)] for k in idx}

    sx = stats(X, tx, [i for i, _ in pairs])
    sy = stats(Y, ty, [j for _, j in pairs])
    vals = []
    for i, j in pairs:
        vals.append(ot.bures_from_stats(sx[i], sy[j])[0])
        if tick is not None:
            tick(1)
    v = torch.stack(vals) if vals else torch.zeros(0, dtype=torch.float64)
    return Measured(v, torch.ones(len(pairs), dtype=torch.bool))


def pair_values(name: str, X: torch.Tensor, Y: torch.Tensor, pairs: Sequence[tuple[int, int]],
                eps: float | None = None, max_bytes: float = 1 << 30, *,
                tags: tuple = (None, None), cache: _Cache | None = None,
                tick: Callable[[int], None] | None = None, **opts) -> Measured:
    """``name`` between ``X[i]`` and ``Y[j]`` for each ``(i, j)`` in ``pairs`` -> ``[P]``.

    ``tags`` name the point samples of ``X`` and ``Y`` so that per-cloud terms in ``cache``
    (Sinkhorn self terms, Gaussian statistics) are computed once across calls; ``tick(k)`` is
    called as pairs (and per-cloud Sinkhorn terms) complete.
    """
    pairs = list(pairs)
    if name == "sinkhorn":
        if eps is None:
            raise ConfigError("sinkhorn pairs need an absolute eps (see shared_eps)")
        return _sinkhorn_pairs(X, Y, pairs, eps, opts, max_bytes, tags, cache, tick)
    if name == "bures":
        return _bures_pairs(X, Y, pairs, tags, cache, tick)
    step = _chunks(len(pairs), X.shape[1], Y.shape[1], max_bytes)
    vals, conv = [], []
    for s in range(0, len(pairs), step):
        chunk = pairs[s:s + step]
        r = measure(name, X[[i for i, _ in chunk]], Y[[j for _, j in chunk]], **opts)
        vals.append(r.values.double())
        conv.append(r.converged)
        if tick is not None:
            tick(len(chunk))
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


def _plan(name: str, pairs: list, self_pairs: list, n_splits: int) -> list[tuple]:
    """``(tag of X, tag of Y, pairs)`` jobs of one measure: full clouds first, then per split
    the input-half floors, the half-sample pairs and the point-half floors (unpaired), or
    the pairs on each input half (paired)."""
    jobs = [("full", "full", pairs)]
    for s in range(n_splits):
        if is_paired(name):
            jobs += [(f"a{s}", f"a{s}", pairs), (f"b{s}", f"b{s}", pairs)]
        else:
            jobs += [(f"a{s}", f"b{s}", self_pairs), (f"a{s}", f"b{s}", pairs),
                     (f"pa{s}", f"pb{s}", self_pairs)]
    return jobs


def _units(name: str, jobs: list[tuple]) -> int:
    """Progress units of ``jobs``: pairs, plus each Sinkhorn self term computed once."""
    total, seen = 0, set()
    for tx, ty, ps in jobs:
        total += len(ps)
        if name == "sinkhorn":
            new = {(tx, i) for i, _ in ps} | {(ty, j) for _, j in ps}
            total += len(new - seen)
            seen |= new
    return total


def as_clouds(clouds: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``[K, n, d]`` from such a tensor or from a list of ``K`` clouds ``[n, d]`` (one clear
    error when they do not stack)."""
    if isinstance(clouds, (list, tuple)):
        if not clouds:
            raise DataError("compare needs at least two clouds; got an empty list")
        parts = [torch.as_tensor(c) for c in clouds]
        shapes = {tuple(c.shape) for c in parts}
        if any(c.ndim != 2 for c in parts) or len(shapes) != 1:
            raise DataError("clouds must all be [n, d] with the same n (the same inputs) and d; "
                            f"got shapes {', '.join(str(tuple(c.shape)) for c in parts)}")
        return torch.stack(parts)
    if not isinstance(clouds, torch.Tensor) or clouds.ndim != 3:
        what = tuple(clouds.shape) if isinstance(clouds, torch.Tensor) else type(clouds).__name__
        raise DataError(f"clouds must be a tensor [K, n, d] or a list of [n, d] tensors; got {what}")
    return clouds


def compare(clouds: torch.Tensor | Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]], measures: Sequence[str],
            groups: torch.Tensor | None = None, *, n_splits: int = 2, seed: int = 0,
            rel_eps: float = 0.1, eps: float | None = None, floors: bool = True,
            max_bytes: float = 1 << 30, progress: bool = False, desc: str = "",
            **opts) -> dict[str, Comparison]:
    """Every measure on every pair of ``clouds [K, n, d]``, with split-half floors.

    ``clouds`` may also be a list of ``K`` tensors ``[n, d]`` (the same inputs in each).
    ``groups [n]``: the input (row) each point comes from (``None``: one point per input).
    ``progress``: one bar per measure counting pairs (and Sinkhorn self terms), ``desc`` its
    prefix.
    """
    clouds = as_clouds(clouds)
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
    views = {"full": clouds}
    for s, ((a, b), (pa, pb)) in enumerate(zip(splits, psplits, strict=True)):
        views.update({f"a{s}": clouds[:, a], f"b{s}": clouds[:, b],
                      f"pa{s}": clouds[:, pa], f"pb{s}": clouds[:, pb]})
    self_pairs = [(k, k) for k in range(K)]
    out: dict[str, Comparison] = {}
    for name in measures:
        jobs = _plan(name, pairs, self_pairs, n_splits if floors else 0)
        cache = _Cache()
        bar = tqdm(total=_units(name, jobs), desc=f"{desc}{name}", unit="pair", leave=False,
                   disable=not progress)
        kw = dict(eps=eps, max_bytes=max_bytes, cache=cache, tick=bar.update, **opts)

        try:
            res = [pair_values(name, views[tx], views[ty], ps, tags=(tx, ty), **kw)
                   for tx, ty, ps in jobs]
        finally:
            bar.close()
        full = res[0]
        comp = Comparison(name, pairs, full.values, full.converged,
                          eps=eps if name == "sinkhorn" else None)
        if floors and is_paired(name):
            h = torch.stack([r.values for r in res[1:]])
            comp.half, comp.half_sd = h.mean(0), h.std(0)
        elif floors:
            fa, hh, fp = res[1::3], res[2::3], res[3::3]
            conv = comp.converged.clone()
            for r in hh:
                conv &= r.converged
            cloud_floor = torch.stack([r.values for r in fa])   # [S, K]
            pair_floor = torch.stack([(cloud_floor[:, i] + cloud_floor[:, j]) / 2
                                      for i, j in pairs], dim=1)  # [S, P]
            cfp_t = torch.stack([r.values for r in fp])
            comp.cloud_floor = cloud_floor.mean(0)
            comp.floor = pair_floor.mean(0)
            comp.floor_sd = pair_floor.std(0) if n_splits > 1 else torch.zeros(len(pairs))
            comp.floor_points = torch.stack([(cfp_t[:, i] + cfp_t[:, j]) / 2
                                             for i, j in pairs], dim=1).mean(0)
            comp.half = torch.stack([r.values for r in hh]).mean(0)
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
