"""What a model knows against what it says: a probe's accuracy beside the model's own answers.

For a labeled dataset with known answers (``answers``: the right continuation of each text),
``probe --answers`` scores whether the model's greedy answer to each text is the known one
(:mod:`reprlab.answers`) and, on the same test rows as every probe, adds to each row of the
table ``model_answer_acc`` (the model's own answer accuracy) and ``acc_where_model_wrong``
(the probe's accuracy on the rows the model answers wrongly), beside what a constant guess of
the commonest label scores on those rows (``majority_where_model_wrong``: a model that is wrong
on one class only makes a constant probe look perfect there). A probe above the model's own
answers and above that guess reads knowledge the model does not say.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from reprlab.errors import DataError


def check_answers(ds: Any) -> None:
    """One clear line when ``ds`` has no known answers."""
    if getattr(ds, "answers", None) is None:
        raise DataError(f"--answers needs a dataset with known answers, and "
                        f"'{getattr(ds, 'name', '') or 'this dataset'}' has none: give a "
                        "labeled file with an 'answer' column (the right continuation of each "
                        "text), e.g. builtin:toy-syco-truth")


def add_answer_columns(result: Any, lm: Any, ds: Any, batch_size: int = 32) -> dict[str, Any]:
    """Score the model's answers on ``ds`` and add the columns to ``result.rows``."""
    from reprlab.answers import answer_correct

    check_answers(ds)
    said = answer_correct(lm, ds.texts, ds.answers, batch_size=batch_size).tolist()
    right = {str(i): ok for i, ok in zip(ds.ids, said)}
    by: dict[tuple, list[tuple[bool, bool]]] = defaultdict(list)
    for p in result.predictions:
        if p["set"] == "test" and str(p["id"]) in right:
            by[(p["site"], p["position"], p["family"])].append(
                (p["predicted"] == p["label"], right[str(p["id"])], p["label"]))
    for row in result.rows:
        pairs = by.get((row["site"], row["position"], row["family"]), [])
        if not pairs:
            continue
        wrong = [(probe_ok, label) for probe_ok, model_ok, label in pairs if not model_ok]
        row["model_answer_acc"] = sum(m for _, m, _ in pairs) / len(pairs)
        row["acc_where_model_wrong"] = sum(ok for ok, _ in wrong) / len(wrong) if wrong else None
        # what a constant guess of the commonest label scores on those rows: where the model
        # is wrong on one class only, a probe that always says that class scores 1.0 there
        labels = [label for _, label in wrong]
        row["majority_where_model_wrong"] = (max(labels.count(v) for v in set(labels))
                                             / len(labels) if labels else None)
        row["n_model_wrong"] = len(wrong)
    any_pairs = next(iter(by.values()), [])
    return {"model_answer_acc_test": sum(m for _, m, _ in any_pairs) / len(any_pairs)
            if any_pairs else None,
            "model_answer_acc_all": sum(said) / len(said) if said else None}


def answers_line(result: Any) -> str:
    """The report's line: best probe against the model's own answers on the same rows."""
    rows = [r for r in result.rows if "model_answer_acc" in r]
    if not rows:
        return "model answers: no test rows with known answers"
    from reprlab.probes.sweep import rank

    best = max(rows, key=rank)  # chosen on validation, as the probe table's best row
    wrong = best.get("acc_where_model_wrong")
    tail = (f", {wrong:.3f} on the {best['n_model_wrong']} rows the model answers wrongly "
            f"(a constant guess: {best['majority_where_model_wrong']:.3f})"
            if wrong is not None else " (the model answers every test row rightly)")
    return (f"knows vs says: the best probe by validation accuracy ({best['family']} at "
            f"{best['site']}, {best['position']}) is right on {best['test_acc']:.3f} of the test rows{tail}; "
            f"the model's own answers on the same rows: {best['model_answer_acc']:.3f}")
