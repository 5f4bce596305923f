"""``load_dataset``: one entry point from a spec to a validated dataset kind.

A spec is in-memory rows (list of dicts / dict of columns / DataFrame), a file path
(``.csv .tsv .json .jsonl .parquet``), ``"builtin:NAME"`` or ``"hf:NAME[:CONFIG][@SPLIT]"``.
Columns are mapped with ``text_col``, ``label_col``, ``id_col``, ``group_col`` (labeled),
``positive_col``, ``negative_col`` (pairs) and ``prompt_col``, ``chosen_col``, ``rejected_col``
(preferences). ``id_col`` and ``group_col`` are optional: when left at ``None`` the columns
``id`` and ``group`` are used if present, otherwise rows are numbered / ungrouped. A labeled
file's optional ``answer`` column is the known answer to each text (a question).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.data.kinds import ContrastPairs, LabeledDataset, PreferenceTriples, check_ids
from reprlab.errors import DataError

Dataset = LabeledDataset | ContrastPairs | PreferenceTriples

_TRUE, _FALSE = {"true"}, {"false"}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def encode_labels(values: list[Any], column: str, where: str,
                  classes: list[str] | None = None) -> tuple[list[int], list[str]]:
    """Map raw labels (ints, bools, strings) to class indices and class names.

    - bools and the strings ``true``/``false`` (any case) -> 1/0, classes ``["false", "true"]``;
    - ints (or integer strings / floats such as ``"1"``, ``1.0``) -> themselves, classes
      ``"0".."K-1"`` unless ``classes`` names them;
    - other strings -> index in ``classes`` if given, else in the sorted set of labels.

    Refused: missing labels (also the text ``NaN``), numbers that are not integers (``0.5``)
    unless ``classes`` names every label explicitly, and integer labels that leave a class
    without rows (``{0, 2}``: class 1 would be empty).
    """
    from reprlab.data.kinds import check_label_values

    check_label_values(values, column, where, explicit=classes)
    if all(isinstance(v, bool) for v in values) or (
            values and all(isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE
                           for v in values)):
        ints = [1 if (v is True or str(v).strip().lower() in _TRUE) else 0 for v in values]
        return ints, list(classes) if classes else ["false", "true"]

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            s = v.strip()
            if s.lstrip("-").isdigit():
                return int(s)
        return None

    ints_or_none = [as_int(v) for v in values]
    if values and all(x is not None for x in ints_or_none):
        k = len(classes) if classes else max(ints_or_none) + 1
        names = list(classes) if classes else [str(c) for c in range(k)]
        for i, x in enumerate(ints_or_none):
            if not 0 <= x < k:
                raise DataError(f"{where}row {i}, column '{column}' has label {values[i]!r}, "
                                f"not a class index 0..{k - 1}: use labels 0/1 (or 0..K-1), "
                                "or class names")
        if not classes:
            from reprlab.data.kinds import check_no_empty_class

            check_no_empty_class(ints_or_none, names, column, where)
        return ints_or_none, names  # type: ignore[return-value]
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{where}row {bad}, column '{column}' has label {values[bad]!r} "
                        f"({type(values[bad]).__name__}) among string labels: use one label "
                        "type (all class names, or all 0..K-1)")
    names = list(classes) if classes else sorted({v.strip() for v in values})
    index = {c: k for k, c in enumerate(names)}
    out = []
    for i, v in enumerate(values):
        if v.strip() not in index:
            raise DataError(f"{where}row {i}, column '{column}' has label {v!r}, not one of "
                            f"the classes {names}: fix the label or the class list")
        out.append(index[v.strip()])
    return out, names


def _column(records: list[dict[str, Any]], columns: list[str], col: str, role: str,
            where: str) -> list[Any]:
    if col not in columns:
        raise DataError(f"{where}no column '{col}' for the {role} (pass {role}_col=...); "
                        f"columns found: {columns}")
    return [rec.get(col) for rec in records]


def _optional(records, columns, col, default, role, where):
    if col is None:
        col = default
        if col not in columns:
            return None, col
    return _column(records, columns, col, role, where), col


def _check_texts(values: list[Any], col: str, where: str, allow_empty: bool = False) -> None:
    # DataError messages here carry the source's column name, not the dataclass field name
    from reprlab.data.kinds import check_text

    for i, v in enumerate(values):
        check_text(v, i, col, where, allow_empty=allow_empty)


def build_labeled(records: list[dict[str, Any]], columns: list[str], *, name: str = "",
                  where: str = "", text_col: str = "text", label_col: str = "label",
                  id_col: str | None = None, group_col: str | None = None,
                  classes: list[str] | None = None, require_classes: int = 2,
                  provenance: str = "", **unused: Any) -> LabeledDataset:
    texts = _column(records, columns, text_col, "text", where)
    raw_labels = _column(records, columns, label_col, "label", where)
    _check_texts(texts, text_col, where)
    labels, class_names = encode_labels(raw_labels, label_col, where, classes)
    ids, id_name = _optional(records, columns, id_col, "id", "id", where)
    ids = check_ids(ids if ids is not None else range(len(texts)), id_name, where)
    groups, group_name = _optional(records, columns, group_col, "group", "group", where)
    if groups is not None:
        for i, g in enumerate(groups):
            if _missing(g) or str(g) == "":
                raise DataError(f"{where}row {i}, column '{group_name}' is empty: give every "
                                "row a group or pass group_col=None with no 'group' column")
    answers, answer_name = _optional(records, columns, None, "answer", "answer", where)
    if answers is not None:
        _check_texts(answers, answer_name, where)
    ds = LabeledDataset(texts, labels, ids, class_names, groups, name=name,
                        provenance=provenance, answers=answers)
    if require_classes:
        ds.require_classes(require_classes)
    return ds


def build_pairs(records: list[dict[str, Any]], columns: list[str], *, name: str = "",
                where: str = "", positive_col: str = "positive", negative_col: str = "negative",
                id_col: str | None = None, provenance: str = "", **unused: Any) -> ContrastPairs:
    pos = _column(records, columns, positive_col, "positive", where)
    neg = _column(records, columns, negative_col, "negative", where)
    for i, (p, q) in enumerate(zip(pos, neg, strict=True)):
        for value, col in ((p, positive_col), (q, negative_col)):
            if _missing(value) or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{where}pair at row {i} has an empty side (column '{col}'): "
                                "every pair needs both a positive and a negative text")
    _check_texts(pos, positive_col, where)
    _check_texts(neg, negative_col, where)
    ids, id_name = _optional(records, columns, id_col, "id", "id", where)
    ids = check_ids(ids if ids is not None else range(len(pos)), id_name, where)
    return ContrastPairs(pos, neg, ids, name=name, provenance=provenance)


def build_preferences(records: list[dict[str, Any]], columns: list[str], *, name: str = "",
                      where: str = "", prompt_col: str = "prompt", chosen_col: str = "chosen",
                      rejected_col: str = "rejected", id_col: str | None = None,
                      provenance: str = "", **unused: Any) -> PreferenceTriples:
    prompt = _column(records, columns, prompt_col, "prompt", where)
    chosen = _column(records, columns, chosen_col, "chosen", where)
    rejected = _column(records, columns, rejected_col, "rejected", where)
    _check_texts(prompt, prompt_col, where, allow_empty=True)
    _check_texts(chosen, chosen_col, where)
    _check_texts(rejected, rejected_col, where)
    ids, id_name = _optional(records, columns, id_col, "id", "id", where)
    ids = check_ids(ids if ids is not None else range(len(prompt)), id_name, where)
    return PreferenceTriples(prompt, chosen, rejected, ids, name=name, provenance=provenance)


KINDS: dict[str, Callable[..., Any]] = {
    "labeled": build_labeled,
    "pairs": build_pairs,
    "preferences": build_preferences,
}


def _convert(ds: Dataset, kind: str, require_classes: int) -> Dataset:
    """Convert a built-in dataset to the requested kind where that is meaningful."""
    if kind == "labeled" and isinstance(ds, ContrastPairs):
        ds = ds.as_labeled()
    elif kind == "pairs" and isinstance(ds, LabeledDataset):
        ds = ds.as_pairs()
    native = {LabeledDataset: "labeled", ContrastPairs: "pairs",
              PreferenceTriples: "preferences"}[type(ds)]
    if native != kind:
        raise DataError(f"dataset '{ds.name}' holds {native} data and cannot be read as "
                        f"kind='{kind}': pass kind='{native}'")
    if isinstance(ds, LabeledDataset) and require_classes:
        ds.require_classes(require_classes)
    return ds


def read_records(spec: Any, limit: int | None = None,
                 **hf_kwargs: Any) -> tuple[list[dict], list[str], str, str]:
    """Rows of an ``hf:`` spec, a file or in-memory records: ``(records, columns, default
    name, "where: " prefix for messages)``; the first ``limit`` rows; one clear error when
    there are none."""
    from reprlab.data import readers

    if isinstance(spec, str) and spec.startswith("hf:"):
        records, columns = readers.read_hf(spec, limit=limit, **hf_kwargs)
        default_name, where = spec, f"{spec}: "
    elif isinstance(spec, (str, Path)):
        records, columns = readers.read_file(spec)
        default_name, where = Path(spec).stem, f"{spec}: "
    else:
        records, columns = readers.from_memory(spec)
        default_name, where = "", ""
    if limit is not None:
        records = records[: int(limit)]
    if not records:
        raise DataError(f"{where or 'dataset: '}no rows: the source is empty")
    return records, columns, default_name, where


def load_dataset(spec: Any, kind: str = "labeled", *, limit: int | None = None,
                 name: str | None = None, classes: list[str] | None = None,
                 require_classes: int = 2, text_col: str = "text", label_col: str = "label",
                 id_col: str | None = None, group_col: str | None = None,
                 positive_col: str = "positive", negative_col: str = "negative",
                 prompt_col: str = "prompt", chosen_col: str = "chosen",
                 rejected_col: str = "rejected", **hf_kwargs: Any) -> Dataset:
    """Load and validate a dataset of the given ``kind`` ("labeled", "pairs", "preferences").

    ``limit`` keeps the first rows only. ``require_classes`` (labeled only; 0 to disable)
    demands that many classes with rows, since a probe needs both sides. Built-in pair sets
    read as ``kind="labeled"`` become two rows per pair; built-in labeled sets whose groups
    hold one row per class read as ``kind="pairs"`` become pairs. Extra keyword arguments go
    to ``datasets.load_dataset`` for ``hf:`` specs (e.g. ``data_files``).
    """

    if kind not in KINDS:
        raise DataError(f"unknown dataset kind '{kind}': use one of {sorted(KINDS)}")
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of rows, got {limit}")
    if hf_kwargs and not (isinstance(spec, str) and spec.startswith("hf:")):
        raise DataError(f"unexpected options {sorted(hf_kwargs)} for load_dataset: check the "
                        "option names (text_col, label_col, id_col, group_col, ...)")
    if isinstance(spec, str) and spec.startswith("builtin:"):
        from reprlab.data.builtins import load_builtin

        ds = load_builtin(spec[len("builtin:"):])
        if limit is not None:
            ds = ds.subset(range(min(int(limit), len(ds))))
        return _convert(ds, kind, require_classes)
    records, columns, default_name, where = read_records(spec, limit, **hf_kwargs)
    return KINDS[kind](
        records, columns, name=default_name if name is None else name, where=where,
        text_col=text_col, label_col=label_col, id_col=id_col, group_col=group_col,
        classes=classes, require_classes=require_classes, positive_col=positive_col,
        negative_col=negative_col, prompt_col=prompt_col, chosen_col=chosen_col,
        rejected_col=rejected_col)
