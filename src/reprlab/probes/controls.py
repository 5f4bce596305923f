"""Random-label controls (Hewitt & Liang 2019).

A control task keeps the input and the label distribution but breaks the link between them:
the labels are permuted. Where rows come in groups (matched pairs, templates) the
permutation happens within each group, which keeps the group's label make-up; if that cannot
change any label (every group holds one class only) the permutation is global.
Selectivity = task accuracy - control accuracy, with the control probe trained by the same
family, hyperparameters and budget.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

logger = logging.getLogger(__name__)


def permuted_labels(labels: torch.Tensor, groups: list[str] | None = None, seed: int = 0,
                    n: int = 1) -> torch.Tensor:
    """``n`` control label vectors ``[n, N]`` from a seeded generator."""
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    labels = labels.long()
    out = []
    mixed = False
    if groups is not None:
        by: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            by[g].append(i)
        members = [torch.tensor(v) for v in by.values()]
        mixed = any(len(set(labels[m].tolist())) > 1 for m in members)
        if not mixed:
            logger.info("every group holds a single class; the control permutes labels globally")
    for _ in range(n):
        if groups is not None and mixed:
            y = labels.clone()
            for m in members:
                y[m] = labels[m[torch.randperm(len(m), generator=gen)]]
        else:
            y = labels[torch.randperm(len(labels), generator=gen)]
        out.append(y)
    return torch.stack(out)


def selectivity(task_accuracy: torch.Tensor, control_accuracy: torch.Tensor) -> torch.Tensor:
    """Task accuracy minus control accuracy (element-wise)."""
    return task_accuracy - control_accuracy
