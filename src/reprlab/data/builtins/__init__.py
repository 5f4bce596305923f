"""Built-in datasets, registered by name: ``load_dataset("builtin:NAME")``.

Each entry records its kind and a provenance note (also in ``describe()["provenance"]``).
Builders are deterministic; results are cached per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reprlab.data.builtins import cities, larger_than, pairs, puns
from reprlab.errors import DataError


@dataclass(frozen=True)
class Builtin:
    builder: Callable[[], Any]
    kind: str
    summary: str


BUILTINS: dict[str, Builtin] = {
    "cities": Builtin(cities.build, "labeled",
                      "'The city of X is in Y.' true/false, 1,500 rows (Geometry of Truth "
                      "design, GeoNames tables)"),
    "larger_than": Builtin(larger_than.build, "labeled",
                           "'X is larger than Y.' with numbers 51-99 in words, 1,000 rows"),
    "puns": Builtin(puns.build, "labeled",
                    "question jokes: pun vs literal answer to the same question, 260 rows"),
    "puns-heldout": Builtin(puns.build_heldout, "labeled",
                            "statement-shaped puns vs plain sentences (out-of-distribution)"),
    "pairs-sentiment": Builtin(pairs.build_sentiment, "pairs",
                               "60 positive/negative sentiment contrast pairs"),
    "prefs-tiny": Builtin(pairs.build_prefs, "preferences",
                          "30 prompt/chosen/rejected preference triples"),
}


def list_builtins() -> dict[str, str]:
    """Name -> ``"kind: summary"`` for every built-in dataset."""
    return {name: f"{b.kind}: {b.summary}" for name, b in BUILTINS.items()}


@functools.cache
def _build(name: str) -> Any:
    return BUILTINS[name].builder()


def load_builtin(name: str) -> Any:
    """The built-in dataset ``name`` (built once per process; each call returns a copy)."""
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset '{name}': available are "
                        f"{', '.join(sorted(BUILTINS))}")
    ds = _build(name)
    return ds.subset(range(len(ds)))
