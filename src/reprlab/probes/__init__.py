"""Probes: fit every layer at once, with controls, intervals and direction analysis.

>>> from reprlab.probes import probe, sweep
>>> result = probe(model="minilm", data="builtin:cities")   # capture + sweep + report
>>> result = sweep(store, probes=["logistic", "mass-mean"])  # on an existing store
>>> result.best["site"], result.best["direction"]

Families (:data:`FAMILIES`): ``logistic`` (L2, strength chosen on validation), ``mass-mean``
and ``mass-mean-iid`` (Marks & Tegmark 2023), ``mlp`` (one hidden layer, early stopping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprlab._lazy import install

if TYPE_CHECKING:  # the names below load on first use
    from reprlab.probes.fitters import FAMILIES, fit_family
    from reprlab.probes.frozen import Probe
    from reprlab.probes.memory import TensorStore
    from reprlab.probes.run import load_probes, probe
    from reprlab.probes.sweep import SweepResult, sweep

install(__name__, {
    "FAMILIES": "reprlab.probes.fitters",
    "fit_family": "reprlab.probes.fitters",
    "Probe": "reprlab.probes.frozen",
    "TensorStore": "reprlab.probes.memory",
    "load_probes": "reprlab.probes.run",
    "probe": "reprlab.probes.run",
    "SweepResult": "reprlab.probes.sweep",
    "sweep": "reprlab.probes.sweep",
})

__all__ = ["FAMILIES", "Probe", "SweepResult", "TensorStore", "fit_family", "load_probes", "probe",
           "sweep"]
