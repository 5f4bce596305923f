"""reprlab: find, test and track what language models represent inside.

Importing the package is cheap: the public names below load their modules on first use.

>>> import reprlab
>>> lm = reprlab.load_model("minilm")                       # bundled, offline
>>> store = reprlab.capture(lm, "builtin:cities", "layers.*", "mean", out="runs/cap")
>>> store["layers.3", "mean"].shape
torch.Size([1500, 384])
"""

from __future__ import annotations

from reprlab._lazy import install

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


# ``capture`` is a function and a submodule: reprlab.capture(...) calls the function, also
# after the submodule was imported
install(__name__, _EXPORTS, callable_submodules=True)
