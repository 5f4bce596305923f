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
    #: the label is a relation between the row's words (a statement's truth, a comparison),
    #: so the set is balanced for no word to predict it: a bag-of-words model stays near
    #: chance, and a probe must read what the model computed (held by a test)
    relational: bool = False
    #: a set for choosing settings (validation, coherence control), never scored as a shift
    tuning: bool = False


def _toy(fn: str, *args: Any) -> Callable[[], Any]:
    def build() -> Any:
        from reprlab.toy import tasks

        return getattr(tasks, fn)(*args)
    return build


def _toy_shift(shift: str) -> Callable[[], Any]:
    def build() -> Any:
        from reprlab.toy.tasks import preference_shifts

        return preference_shifts()[shift]
    return build


def _syco(fn: str) -> Callable[[], Any]:
    def build() -> Any:
        from reprlab.toy import syco_data

        return getattr(syco_data, fn)()
    return build


def _syco_shift(shift: str) -> Callable[[], Any]:
    def build() -> Any:
        from reprlab.toy.syco_data import preference_shifts

        return preference_shifts()[shift]
    return build


def toy_builtins() -> dict[str, Builtin]:
    """The toy world's datasets (:mod:`reprlab.toy.tasks`), for the toy models."""
    out = {
        "toy-truth": Builtin(_toy("truth_dataset"), "labeled",
                             "toy world: 'The city of X is in Y . This is' true/false, 320 "
                             "rows ending where the toy says its verdict (known answers: "
                             "probe --answers), each country as often false as true; probes "
                             "on toy read 0.77-0.80, the toy itself says 0.50-0.63",
                             relational=True),
        "toy-pairs": Builtin(_toy("sentiment_pairs"), "pairs",
                             "toy world: 200 positive/negative sentiment contrast pairs"),
        "toy-judge-pairs": Builtin(_toy("judge_pairs"), "pairs",
                                   "toy world: 200 true/false comparison pairs ('72 is larger "
                                   "than 17 . This is', the numbers swapped): a direction the "
                                   "toy uses"),
        "toy-text": Builtin(_toy("eval_text"), "labeled",
                            "toy world: 600 held-out sentences (one class, 'text')"),
        "toy-prefs": Builtin(_toy_shift("train"), "preferences",
                             "toy world: prefer the true sum over a near miss (operand pairs "
                             "never trained)"),
    }
    out |= {
        "toy-syco-truth": Builtin(_syco("truth_dataset"), "labeled",
                                  "toy-syco chat prompts stating a landmark's city, true/false "
                                  "(400 rows, each word as often true as false; known answers)",
                                  relational=True),
        "toy-syco-pairs": Builtin(_syco("steering_pairs"), "pairs",
                                  "toy-syco false-belief prompts answered truthfully vs "
                                  "sycophantically, 72 pairs"),
        "toy-syco-prefs": Builtin(_syco_shift("train"), "preferences",
                                  "toy-syco: the truth over agreeing with a false belief "
                                  "(training landmarks, 360 pairs)"),
    }
    for shift, what in (("in-domain", "held-out landmarks"),
                        ("phrasing", "beliefs in phrasings never trained"),
                        ("third-party", "someone else's belief"),
                        ("cross-family", "city -> country beliefs"),
                        ("orthogonal", "comparisons: the right yes/no over the wrong one")):
        out[f"toy-syco-prefs-{shift}"] = Builtin(_syco_shift(shift), "preferences",
                                                f"toy-syco preference shift: {what}")
    for name, what in (("validation", "held-back training landmarks, to choose a method's "
                        "settings on (in-domain, not a shift)"),
                       ("control", "comparisons the SFT model was trained on: a coherence "
                        "check for tuning that looks at no shift")):
        out[f"toy-syco-prefs-{name}"] = Builtin(_syco_shift(name), "preferences",
                                               f"toy-syco tuning set: {what}", tuning=True)
    for shift, what in (("in-domain", "other unseen sums, a near miss"),
                        ("harder", "sums of three operands, a near miss"),
                        ("cross-domain", "prefer the true city or country"),
                        ("orthogonal", "prefer a happy over a sad sentence")):
        out[f"toy-prefs-{shift}"] = Builtin(_toy_shift(shift), "preferences",
                                           f"toy world preference shift: {what}")
    return out


BUILTINS: dict[str, Builtin] = {
    "cities": Builtin(cities.build, "labeled",
                      "'The city of X is in Y.' true/false, 1,500 rows (Geometry of Truth "
                      "design, GeoNames tables; each country as often false as true)",
                      relational=True),
    "larger_than": Builtin(larger_than.build, "labeled",
                           "'X is larger/smaller than Y.' with numbers 51-99 in words, "
                           "1,000 rows (each pair in both orders)", relational=True),
    "puns": Builtin(puns.build, "labeled",
                    "question jokes: pun vs literal answer to the same question, 260 rows "
                    "(the label is lexical by nature: the words are the pun)"),
    "puns-heldout": Builtin(puns.build_heldout, "labeled",
                            "statement-shaped puns vs plain sentences (out-of-distribution; "
                            "lexical by nature)"),
    "pairs-sentiment": Builtin(pairs.build_sentiment, "pairs",
                               "60 positive/negative sentiment contrast pairs"),
    "prefs-tiny": Builtin(pairs.build_prefs, "preferences",
                          "30 prompt/chosen/rejected preference triples"),
    **toy_builtins(),
}


def relational_builtins() -> list[str]:
    """Names of the built-ins whose label is a relation between their words."""
    return [name for name, b in BUILTINS.items() if b.relational]


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
