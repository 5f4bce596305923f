"""reprlab: find, test and track what language models represent inside.

Importing the package is cheap: the public names below load their modules on first use.

>>> import reprlab
>>> lm = reprlab.load_model("minilm")                       # bundled, offline
>>> store = reprlab.capture(lm, "builtin:cities", "layers.*", "mean", out="runs/cap")
>>> store["layers.3", "mean"].shape
torch.Size([1500, 384])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "reprlab.models",
    "LoadedModel": "reprlab.models",
    "resolve_sites": "reprlab.sites",
    "capture": "reprlab.capture",
    "ActivationStore": "reprlab.store",
    "load_dataset": "reprlab.data",
    "LabeledDataset": "reprlab.data",
    "ContrastPairs": "reprlab.data",
    "PreferenceTriples": "reprlab.data",
    "RunDir": "reprlab.report",
    "session": "reprlab.sessions",
    "probe": "reprlab.workflows",
    "sweep": "reprlab.probes",
    "ReprlabError": "reprlab.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
