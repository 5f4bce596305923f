"""Steering: directions from pairs, labels, probes or files; operators; generation; validation.

>>> vec = fit_steering_vector(lm, load_dataset("builtin:pairs-sentiment", kind="pairs"))
>>> with vec.steer(lm, coeff=4.0, sites=["layers.3"]):
...     out = lm.model(**batch)
>>> results = validate(lm, vec, "layers.3", "-8:8:9", texts=texts, readout=readout)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprlab._lazy import install

if TYPE_CHECKING:  # the names below load on first use
    from reprlab.steering.directions import METHODS, estimate
    from reprlab.steering.fit import SteeringFitter, collect, fit_steering_vector
    from reprlab.steering.generate import generate
    from reprlab.steering.gguf_io import export_gguf, import_gguf
    from reprlab.steering.operators import OPERATORS, Scope, apply_operator, parse_coeffs, steer
    from reprlab.steering.readout import Readout, load_readouts
    from reprlab.steering.validate import run_validation, validate, validate_probe_run
    from reprlab.steering.vector import SteeringVector, from_tensors

install(__name__, {
    "METHODS": "reprlab.steering.directions",
    "estimate": "reprlab.steering.directions",
    "SteeringFitter": "reprlab.steering.fit",
    "collect": "reprlab.steering.fit",
    "fit_steering_vector": "reprlab.steering.fit",
    "generate": "reprlab.steering.generate",
    "export_gguf": "reprlab.steering.gguf_io",
    "import_gguf": "reprlab.steering.gguf_io",
    "OPERATORS": "reprlab.steering.operators",
    "Scope": "reprlab.steering.operators",
    "apply_operator": "reprlab.steering.operators",
    "parse_coeffs": "reprlab.steering.operators",
    "steer": "reprlab.steering.operators",
    "Readout": "reprlab.steering.readout",
    "load_readouts": "reprlab.steering.readout",
    "run_validation": "reprlab.steering.validate",
    "validate": "reprlab.steering.validate",
    "validate_probe_run": "reprlab.steering.validate",
    "SteeringVector": "reprlab.steering.vector",
    "from_tensors": "reprlab.steering.vector",
})

__all__ = [
    "METHODS",
    "OPERATORS",
    "Readout",
    "Scope",
    "SteeringFitter",
    "SteeringVector",
    "apply_operator",
    "collect",
    "estimate",
    "export_gguf",
    "fit_steering_vector",
    "from_tensors",
    "generate",
    "import_gguf",
    "load_readouts",
    "parse_coeffs",
    "run_validation",
    "steer",
    "validate",
    "validate_probe_run",
]
