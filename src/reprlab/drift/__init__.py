"""How representations move: between layers, between checkpoints, during training.

Maths (pure torch, batched over pairs, CPU or GPU): :mod:`~reprlab.drift.ot` (debiased
Sinkhorn divergence, exact EMD, sliced and Gaussian W2) and :mod:`~reprlab.drift.similarity`
(linear CKA, orthogonal Procrustes, paired displacement). Validity: split-half noise floors
(:mod:`~reprlab.drift.compare`), one shared basis (:mod:`~reprlab.drift.basis`), checkpoints
ordered by step (:mod:`~reprlab.drift.checkpoints`). Phase transitions:
:mod:`~reprlab.drift.changepoints`. Workflows: :mod:`~reprlab.drift.workflow`; tracked training
(:mod:`~reprlab.drift.track`) including the built-in grokking task
(:mod:`~reprlab.drift.tasks.grokking`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprlab._lazy import install

if TYPE_CHECKING:  # the names below load on first use
    from reprlab.drift.changepoints import ChangePoint, detect
    from reprlab.drift.compare import Comparison, compare
    from reprlab.drift.ot import (
        bures_wasserstein,
        emd2,
        sinkhorn,
        sinkhorn_divergence,
        sliced_wasserstein,
    )
    from reprlab.drift.similarity import linear_cka, paired_displacement, procrustes_distance

install(__name__, {
    "ChangePoint": "reprlab.drift.changepoints",
    "detect": "reprlab.drift.changepoints",
    "Comparison": "reprlab.drift.compare",
    "compare": "reprlab.drift.compare",
    "bures_wasserstein": "reprlab.drift.ot",
    "emd2": "reprlab.drift.ot",
    "sinkhorn": "reprlab.drift.ot",
    "sinkhorn_divergence": "reprlab.drift.ot",
    "sliced_wasserstein": "reprlab.drift.ot",
    "linear_cka": "reprlab.drift.similarity",
    "paired_displacement": "reprlab.drift.similarity",
    "procrustes_distance": "reprlab.drift.similarity",
})

__all__ = [
    "ChangePoint",
    "Comparison",
    "bures_wasserstein",
    "compare",
    "detect",
    "emd2",
    "linear_cka",
    "paired_displacement",
    "procrustes_distance",
    "sinkhorn",
    "sinkhorn_divergence",
    "sliced_wasserstein",
]
