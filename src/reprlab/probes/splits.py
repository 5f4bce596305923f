"""Stratified, group-aware splits and k-fold assignments for probe sweeps.

Rows that share a group (matched pairs, templates, the same city) always land in the same
split, so a probe is never scored on the twin of a training row. Groups are stratified by
their label make-up (e.g. "one true + one false"), so every split keeps the class balance.
Everything is driven by a seeded generator: same seed, same split.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from reprlab.errors import DataError

try:  # the project-wide splitter (same guarantees); the local one is a fallback
    from reprlab.data.split import kfold_indices as _shared_kfold
    from reprlab.data.split import stratified_split as _shared_split
except ImportError:  # pragma: no cover
    _shared_split = _shared_kfold = None


def _group_units(labels: list[int], groups: list[str] | None) -> tuple[list[list[int]], list[tuple]]:
    """Rows per unit (group, or single row) and each unit's stratum key."""
    if groups is None:
        units = [[i] for i in range(len(labels))]
    else:
        by: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            by[g].append(i)
        units = list(by.values())
    keys = [tuple(sorted(labels[i] for i in u)) for u in units]
    return units, keys


def _shuffled_strata(labels, groups, seed) -> list[list[list[int]]]:
    units, keys = _group_units(labels, groups)
    strata: dict[tuple, list[list[int]]] = defaultdict(list)
    for u, k in zip(units, keys):
        strata[k].append(u)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for k in sorted(strata):
        us = strata[k]
        order = torch.randperm(len(us), generator=gen).tolist()
        out.append([us[i] for i in order])
    return out


def split_rows(labels: list[int] | torch.Tensor, fractions: tuple[float, ...] = (0.6, 0.2, 0.2),
               groups: list[str] | None = None, seed: int = 0,
               names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, torch.Tensor]:
    """Stratified group-aware split into ``names`` with the given ``fractions`` (normalised).

    Returns sorted row-index tensors per split. Raises :class:`DataError` when a split would be
    empty or miss a class (one clear line naming the fix).
    """
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(set(labels)) < 2:
        raise DataError(f"the labels hold a single class ({sorted(set(labels))}): probing needs "
                        "rows of at least two classes")
    if len(fractions) != len(names) or any(float(f) <= 0 for f in fractions):
        raise DataError(f"split fractions {tuple(fractions)} must be {len(names)} positive numbers")
    total = float(sum(fractions))
    fr = tuple(float(f) / total for f in fractions)
    if _shared_split is not None:
        parts = _shared_split(labels, fr, seed=seed, groups=groups)
        return {n: torch.as_tensor(p, dtype=torch.long) for n, p in zip(names, parts)}
    return _split_rows_local(labels, fr, groups, seed, names)


def _split_rows_local(labels, fractions, groups, seed, names) -> dict[str, torch.Tensor]:
    n = len(labels)
    cum = torch.tensor(fractions, dtype=torch.float64).cumsum(0)
    parts: list[list[int]] = [[] for _ in names]
    for units in _shuffled_strata(labels, groups, seed):
        rows_total = sum(len(u) for u in units)
        seen = 0
        for u in units:
            # the unit goes where the midpoint of its rows falls in the cumulative fractions
            mid = (seen + len(u) / 2) / rows_total
            j = int(torch.searchsorted(cum, torch.tensor(mid, dtype=torch.float64)).item())
            parts[min(j, len(names) - 1)].extend(u)
            seen += len(u)
    out = {}
    n_classes = len(set(labels))
    for name, rows in zip(names, parts):
        if not rows:
            raise DataError(f"too few rows ({n}) for a {'/'.join(names)} split of "
                            f"{'/'.join(f'{f:.2f}' for f in fractions)}: add rows, or "
                            "use cross-validation (--folds 5)")
        present = sorted({labels[i] for i in rows})
        if len(present) < min(2, n_classes) or n_classes < 2:
            raise DataError(f"the {name} split holds a single class ({present}) of {n} rows: "
                            "add rows of every class, or use cross-validation (--folds 5)")
        out[name] = torch.tensor(sorted(rows), dtype=torch.long)
    return out


def kfold_rows(labels: list[int] | torch.Tensor, k: int = 5, groups: list[str] | None = None,
               seed: int = 0) -> list[torch.Tensor]:
    """``k`` stratified group-aware folds (row-index tensors), dealt round-robin per stratum."""
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    if _shared_kfold is not None:
        return [torch.as_tensor(te, dtype=torch.long)
                for _, te in _shared_kfold(labels, k, seed=seed, groups=groups)]
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for units in _shuffled_strata(labels, groups, seed):
        for i, u in enumerate(units):
            folds[(offset + i) % k].extend(u)
        offset += len(units)
    for i, f in enumerate(folds):
        if not f:
            raise DataError(f"too few rows or groups ({len(labels)} rows) for {k}-fold "
                            "cross-validation: use fewer folds or add rows")
        if len({labels[r] for r in f}) < 2:
            raise DataError(f"fold {i} of {k} holds a single class: use fewer folds or add "
                            "rows of every class")
    return [torch.tensor(sorted(f), dtype=torch.long) for f in folds]
