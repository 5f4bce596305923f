"""Deterministic, stratified, group-aware splits and k-fold indices.

Rows are gathered into units (one unit per group, or per row without groups). Units with the
same label composition form a stratum; each stratum is shuffled with a seeded generator and
dealt to the splits by cumulative rounding, so that every split's share of each stratum (and
so of each class) is within one unit of its target, and no group is ever cut across splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reprlab.errors import DataError


def _as_list(x: Any) -> list[Any]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _units(labels: list[Any], groups: list[Any] | None) -> tuple[list[list[int]], list[Any]]:
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    if groups is None:
        return [[i] for i in range(len(labels))], classes
    if len(groups) != len(labels):
        raise DataError(f"groups has {len(groups)} entries for {len(labels)} labels: give one "
                        "group per row")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return list(members.values()), classes


def _allocate(labels: list[Any], fractions: Sequence[float], seed: int,
              groups: list[Any] | None) -> list[list[int]]:
    units, classes = _units(labels, groups)
    cls_index = {c: k for k, c in enumerate(classes)}
    strata: dict[tuple[int, ...], list[int]] = {}
    for u, rows in enumerate(units):
        sig = [0] * len(classes)
        for i in rows:
            sig[cls_index[labels[i]]] += 1
        strata.setdefault(tuple(sig), []).append(u)
    rng = np.random.default_rng(seed)
    f = np.asarray(fractions, dtype=float)
    assigned = np.zeros(len(f), dtype=np.int64)
    seen = 0
    out: list[list[int]] = [[] for _ in f]
    for sig in sorted(strata, reverse=True):
        members = strata[sig]
        order = [members[j] for j in rng.permutation(len(members))]
        seen += len(order)
        target = seen * f
        take = np.maximum(np.floor(target + 1e-9).astype(np.int64) - assigned, 0)
        while take.sum() > len(order):  # cannot happen with valid fractions; stay safe
            take[np.argmax(take)] -= 1
        rest = len(order) - int(take.sum())
        if rest:
            gap = target - assigned - take
            for k in np.argsort(-gap, kind="stable")[:rest]:
                take[k] += 1
        start = 0
        for k, n in enumerate(take):
            for u in order[start:start + int(n)]:
                out[k].extend(units[u])
            start += int(n)
        assigned += take
    return [sorted(rows) for rows in out]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(x) for x in fractions)
    if len(fr) < 2 or any(x <= 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split fractions {fr} must be at least two positive numbers that sum "
                        "to 1, e.g. (0.6, 0.2, 0.2)")
    return fr


def _check_parts(parts: list[list[int]], labels: list[Any], names: list[str],
                 what: str) -> None:
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    for name, rows in zip(names, parts, strict=True):
        have = {labels[i] for i in rows}
        missing = [c for c in classes if c not in have]
        if not rows or missing:
            detail = "no rows" if not rows else f"no rows of class {missing[0]!r}"
            raise DataError(f"too few rows for the requested split: {name} would get {detail} "
                            f"({len(labels)} rows, {what}); use more data, fewer splits, or "
                            "larger fractions")


def stratified_split(labels: Any, fractions: Sequence[float] | None = None, *,
                     test_size: float | None = None, val_size: float | None = None,
                     seed: int = 0, groups: Any = None) -> tuple[np.ndarray, ...]:
    """Split row indices into parts, stratified by label and never cutting a group.

    Args:
        labels: ``[n]`` class labels (any hashable values; tensors and arrays accepted).
        fractions: part sizes summing to 1 (default ``(0.6, 0.2, 0.2)`` = train/val/test).
        test_size, val_size: alternative to ``fractions``: gives ``(train, test)`` or, with
            ``val_size``, ``(train, val, test)``.
        seed: the same seed always gives the same split.
        groups: ``[n]`` group ids; all rows of a group land in the same part.

    Returns:
        One sorted ``int64`` index array per part.

    Raises:
        DataError: a part would be empty or lack a class.
    """
    labels = _as_list(labels)
    groups = None if groups is None else _as_list(groups)
    if fractions is not None and (test_size is not None or val_size is not None):
        raise DataError("pass either fractions or test_size/val_size, not both")
    if fractions is None:
        if test_size is None and val_size is None:
            fractions = (0.6, 0.2, 0.2)
        elif val_size is None:
            fractions = (1.0 - float(test_size), float(test_size))
        else:
            test = 0.2 if test_size is None else float(test_size)
            fractions = (1.0 - float(val_size) - test, float(val_size), test)
    fr = _check_fractions(fractions)
    parts = _allocate(labels, fr, seed, groups)
    names = (["train", "val", "test"] if len(fr) == 3 else ["train", "test"] if len(fr) == 2
             else [f"part {k}" for k in range(len(fr))])
    _check_parts(parts, labels, [f"{n} (fraction {f:g})" for n, f in zip(names, fr,
                                                                          strict=True)],
                 f"{len(set(groups))} groups" if groups is not None else "no groups")
    return tuple(np.asarray(p, dtype=np.int64) for p in parts)


def kfold_indices(labels: Any, k: int = 5, seed: int = 0,
                  groups: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, group-aware k-fold: ``k`` pairs of sorted ``(train_idx, test_idx)``.

    Every row is in exactly one test fold; groups never cross folds.
    """
    if int(k) < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    labels = _as_list(labels)
    groups = None if groups is None else _as_list(groups)
    parts = _allocate(labels, [1.0 / k] * k, seed, groups)
    _check_parts(parts, labels, [f"fold {j}" for j in range(k)], f"k={k}")
    n = len(labels)
    folds = []
    for test in parts:
        mask = np.ones(n, dtype=bool)
        mask[test] = False
        folds.append((np.flatnonzero(mask).astype(np.int64), np.asarray(test, dtype=np.int64)))
    return folds


def split_dataset(ds: Any, fractions: Sequence[float] | None = None, *, seed: int = 0,
                  test_size: float | None = None, val_size: float | None = None) -> tuple:
    """Split a :class:`LabeledDataset` by its labels and groups into sub-datasets."""
    parts = stratified_split(ds.labels, fractions, test_size=test_size, val_size=val_size,
                             seed=seed, groups=ds.groups)
    return tuple(ds.subset(p) for p in parts)
