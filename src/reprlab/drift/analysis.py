"""Drift analyses on clouds: layer × layer, checkpoint series, change points.

Clouds come from activation stores (:func:`store_clouds`): one position (``"all"``: every
non-padding token, or a pooled position such as ``"last"``/``"mean"``), a fixed-seed sample of
points that is the same at every site and every checkpoint, so paired measures can use the
correspondence and floors can split by input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from reprlab.drift.basis import shared_basis
from reprlab.drift.changepoints import detect, strongest
from reprlab.drift.compare import compare, matrix
from reprlab.drift.measures import SIMILARITIES
from reprlab.errors import DataError

logger = logging.getLogger(__name__)


def sample_points(store, position: str, n_points: int | None, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed sample of point indices of ``store[site, position]`` and their input rows.

    Returns ``(index [n], groups [n])``; ``n_points`` None/0, or more than the store holds,
    keeps every point.
    """
    if position == "all":
        rows = store.token_index[:, 0].long()
    else:
        rows = torch.arange(store.n_rows)
    total = len(rows)
    if n_points and n_points > total:
        logger.info("the store at %s holds %d points at position %r, fewer than the %d "
                    "requested: using all of them", store.path, total, position, n_points)
    if not n_points or n_points >= total:
        idx = torch.arange(total)
    else:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=g)[:n_points].sort().values
    return idx, rows[idx]


def store_clouds(store, sites: Sequence[str], position: str, idx: torch.Tensor,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
    """``[K, n, d]`` clouds of ``sites`` at ``position`` for the sampled points ``idx``."""
    if position not in store.positions:
        raise DataError(f"position {position!r} is not in the store at {store.path}; it holds "
                        f"{', '.join(store.positions)}")
    out = [store[s, position][idx].to(dtype=dtype) for s in sites]
    widths = {t.shape[-1] for t in out}
    if len(widths) > 1:
        raise DataError(f"sites {', '.join(sites)} have different widths {sorted(widths)}; "
                        "compare sites of one width (e.g. block outputs)")
    return torch.stack(out).to(device)


def layers_analysis(clouds: torch.Tensor, labels: Sequence[str], groups: torch.Tensor,
                    measures: Sequence[str], *, pca: int | None = None, seed: int = 0,
                    n_splits: int = 2, rel_eps: float = 0.1, progress: bool = False,
                    **opts) -> dict:
    """Every measure between every pair of ``clouds [K, n, d]`` (one checkpoint's layers);
    ``progress``: a bar per measure over its pairs and floors."""
    K = clouds.shape[0]
    work = shared_basis(clouds, pca, seed)
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    comps = compare(work, pairs, measures, groups, n_splits=n_splits, seed=seed,
                    rel_eps=rel_eps, progress=progress, desc=f"{K} sites: ", **opts)
    out = {"labels": list(labels), "measures": {}, "rows": []}
    for name, c in comps.items():
        entry = {"matrix": matrix(c, K).tolist(), "converged": bool(c.converged.all())}
        if c.floor is not None:
            entry["half_matrix"] = matrix(c, K, "half").tolist()
            entry["floor_matrix"] = matrix(c, K, "floor").tolist()
            entry["cloud_floor"] = c.cloud_floor.tolist()
            entry["floor_points"] = matrix(c, K, "floor_points").tolist()
        if c.eps is not None:
            entry["eps"] = c.eps
        out["measures"][name] = entry
        out["rows"].extend(c.rows(labels))
    return out


def above_floor(half: torch.Tensor, floor: torch.Tensor, floor_sd: torch.Tensor,
                index: int) -> bool:
    """Whether the drift from ``index`` on stands out of its split-half noise floor: the mean
    half-sample distance of the new segment above the mean floor plus two floor sds."""
    h = half[index:].double()
    top = (floor[index:] + 2 * floor_sd[index:]).double()
    return bool(h.numel() and h.mean() > top.mean())


def series_analysis(steps: Sequence[int], clouds: dict[str, torch.Tensor], groups: torch.Tensor,
                    measures: Sequence[str], *, pca: int | None = None, seed: int = 0,
                    n_splits: int = 2, rel_eps: float = 0.1, matrix_measure: str | None = None,
                    max_matrix: int = 16, progress: bool = False, **opts) -> dict:
    """Consecutive-checkpoint drift per site, checkpoint × checkpoint matrices, change points.

    ``clouds``: ``{site: [T, n, d]}`` with the same points at every checkpoint ``steps [T]``.
    """
    from tqdm.auto import tqdm

    steps = [int(s) for s in steps]
    T = len(steps)
    if T < 2:
        raise DataError("need at least two checkpoints to measure drift")
    out: dict = {"steps": steps, "sites": {}, "rows": []}
    mm = matrix_measure or measures[0]
    sub = sorted(set(torch.linspace(0, T - 1, min(T, max_matrix)).round().long().tolist()))
    for site, x in tqdm(clouds.items(), desc="drift", disable=not progress):
        if x.shape[0] != T:
            raise DataError(f"site {site} has {x.shape[0]} checkpoints, expected {T}")
        work = shared_basis(x, pca, seed)
        pairs = [(t, t + 1) for t in range(T - 1)]
        comps = compare(work, pairs, measures, groups, n_splits=n_splits, seed=seed,
                        rel_eps=rel_eps, progress=progress, desc=f"{site}: ", **opts)
        site_out: dict = {"consecutive": {}, "change_points": {}, "transition": {}}
        for name, c in comps.items():
            vals = c.value.double()
            series = (1 - vals) if name in SIMILARITIES else vals   # drift = dissimilarity
            entry = {"steps": steps[1:], "value": vals.tolist(),
                     "drift": series.tolist(), "converged": c.converged.tolist()}
            if c.floor is not None:
                entry.update(half=c.half.tolist(), floor=c.floor.tolist(),
                             floor_sd=c.floor_sd.tolist(), floor_points=c.floor_points.tolist())
            site_out["consecutive"][name] = entry
            use_log = bool((series > 0).all())
            pts = detect(series, steps[1:], log=use_log)
            site_out["change_points"][name] = [p.to_dict() for p in pts]
            top = strongest(pts, "up")
            tr = top.to_dict() if top else None
            if tr is not None and c.floor is not None:
                tr["above_floor"] = above_floor(c.half, c.floor, c.floor_sd, top.index)
            site_out["transition"][name] = tr
            for k, (i, j) in enumerate(c.pairs):
                row = {"site": site, "measure": name, "step_a": steps[i], "step_b": steps[j],
                       "value": float(vals[k]), "converged": bool(c.converged[k])}
                if c.floor is not None:
                    row.update(half=float(c.half[k]), floor=float(c.floor[k]))
                out["rows"].append(row)
        # checkpoint × checkpoint on a subsample of checkpoints (all pairs)
        xs = work[sub]
        pairs = [(i, j) for i in range(len(sub)) for j in range(i + 1, len(sub))]
        cm = compare(xs, pairs, [mm], groups, floors=False, seed=seed, rel_eps=rel_eps,
                     progress=progress, desc=f"{site} checkpoint matrix: ", **opts)[mm]
        site_out["matrix"] = {"measure": mm, "steps": [steps[i] for i in sub],
                              "values": matrix(cm, len(sub)).tolist()}
        out["sites"][site] = site_out
    return out


def curve_change_points(history: Sequence[dict], keys: Sequence[str]) -> dict:
    """Change points of metric curves (losses on a log scale, accuracies as they are)."""
    steps = [m["step"] for m in history]
    out = {}
    for k in keys:
        vals = [m.get(k) for m in history]
        if any(v is None for v in vals) or len(vals) < 4:
            continue
        y = torch.tensor(vals, dtype=torch.float64)
        log = "loss" in k and bool((y > 0).all())
        out[k] = [p.to_dict() for p in detect(y, steps, log=log)]
    return out


def crossing(history: Sequence[dict], key: str, level: float = 0.5) -> int | None:
    """First step at which ``history[key]`` reaches ``level``."""
    for m in history:
        if m.get(key) is not None and m[key] >= level:
            return int(m["step"])
    return None
