"""Dataset kinds: labeled rows, contrast pairs and preference triples.

Each kind is an immutable dataclass validated on construction; any problem raises
:class:`~reprlab.errors.DataError` naming the row and field. Rows are addressed by their
0-based position. ``hash()`` is a SHA-256 over the content (stable across processes and
platforms), recorded in run manifests so that results can be traced to their exact data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reprlab.errors import DataError

Span = tuple[int, int]


def _content_hash(kind: str, payload: dict[str, Any]) -> str:
    """SHA-256 hex digest of a canonical JSON encoding of ``payload``."""
    blob = json.dumps({"kind": kind, **payload}, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_text(value: Any, row: int, field: str, where: str = "", allow_empty: bool = False) -> str:
    """Return ``value`` if it is a usable text, else raise DataError naming row and field."""
    loc = f"{where}row {row}, column '{field}'"
    if _is_missing(value):
        raise DataError(f"{loc} is missing (None/NaN): fill in the text or drop the row")
    if not isinstance(value, str):
        raise DataError(f"{loc} is a {type(value).__name__} ({value!r}), not a string: "
                        "store texts as strings")
    if not allow_empty and not value.strip():
        raise DataError(f"{loc} is an empty text: fill it in or drop the row")
    return value


_NUMBER_WORDS = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "-infinity",
                 "none", "null", "na", "n/a"}


def _non_integer_number(v: Any) -> bool:
    """A float, or a text that reads as a number, that is not a whole number."""
    if isinstance(v, bool):
        return False
    if isinstance(v, float):
        return not v.is_integer()
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return False
        return not f.is_integer()
    return False


def check_label_values(values: Sequence[Any], column: str, where: str = "",
                       explicit: Sequence[str] | None = None) -> None:
    """Refuse raw labels that cannot be classes: missing ones (None, NaN, empty, the text
    ``NaN``/``null``), and non-integer numbers (``0.5``) unless ``explicit`` classes name them."""
    for i, v in enumerate(values):
        text = v.strip().lower() if isinstance(v, str) else None
        if _is_missing(v) or text == "" or text in _NUMBER_WORDS:
            raise DataError(f"{where}row {i}, column '{column}' has no label ({v!r}): give "
                            "every row a label or drop it")
        if isinstance(v, float) and not math.isfinite(v):
            raise DataError(f"{where}row {i}, column '{column}' has label {v!r}: give every "
                            "row a finite label")
    names = {str(c) for c in explicit} if explicit else set()
    for i, v in enumerate(values):
        if _non_integer_number(v) and str(v).strip() not in names:
            raise DataError(f"{where}row {i}, column '{column}' has label {v!r}, a number that "
                            "is not a whole class index; labels must be 0..K-1 or class "
                            "names (to keep such values as classes, list them explicitly: "
                            "classes=[...])")


def check_no_empty_class(labels: Sequence[int], classes: Sequence[str], column: str,
                         where: str = "") -> None:
    """Integer labels must use every class 0..K-1 ({0, 2} leaves class 1 without rows)."""
    counts = Counter(labels)
    empty = [c for k, c in enumerate(classes) if counts.get(k, 0) == 0]
    if empty:
        used = ", ".join(str(k) for k in sorted(counts))
        raise DataError(f"{where}column '{column}' has labels {{{used}}}, so class(es) "
                        f"{', '.join(empty)} of 0..{len(classes) - 1} have no rows: renumber "
                        "the labels 0..K-1 or give class names")


def check_ids(ids: Sequence[Any], field: str = "ids", where: str = "") -> list[str]:
    """Ids as strings, unique and non-empty."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(ids):
        if _is_missing(raw) or str(raw).strip() == "":
            raise DataError(f"{where}row {i}, column '{field}' has an empty id: "
                            "give every row an id or leave ids out to number the rows")
        value = str(raw)
        if value in seen:
            raise DataError(f"{where}duplicate id '{value}' in column '{field}' at rows "
                            f"{seen[value]} and {i}: ids must be unique")
        seen[value] = i
        out.append(value)
    return out


def _check_lengths(name: str, **columns: Sequence[Any] | None) -> int:
    sizes = {k: len(v) for k, v in columns.items() if v is not None}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in sizes.items())
        raise DataError(f"dataset '{name}': fields have different lengths ({detail}); "
                        "give one value per row in every field")
    return next(iter(sizes.values()), 0)


def _indices(indices: Any, n: int) -> list[int]:
    """Normalise list/ndarray/tensor of ints (or a boolean mask) to a list of ints."""
    if hasattr(indices, "tolist"):
        indices = indices.tolist()
    idx = list(indices)
    if idx and all(isinstance(v, bool) for v in idx):
        if len(idx) != n:
            raise DataError(f"boolean mask has {len(idx)} entries for {n} rows")
        return [i for i, keep in enumerate(idx) if keep]
    out = []
    for v in idx:
        k = int(v)
        if not -n <= k < n:
            raise DataError(f"row index {k} is out of range for {n} rows")
        out.append(k % n if n else k)
    return out


def _pick(idx: list[int], xs: Sequence[Any]) -> list[Any]:
    return [xs[i] for i in idx]


@dataclass(frozen=True)
class LabeledDataset:
    """Texts with integer class labels (binary or multiclass).

    ``labels[i]`` indexes ``classes``; ``groups`` (optional) ties rows that must stay in one
    split (matched pairs, templates); ``token_masks`` (optional) gives, per row, character
    spans ``(start, end)`` that mark the tokens of interest, or ``None`` for the whole row.
    ``ids`` and ``classes`` default to row numbers and ``"0".."K-1"``. ``answers``
    (optional) is the known right continuation of each text, for datasets whose texts are
    questions (a model's own answers can then be scored beside a probe's accuracy).
    """

    texts: list[str]
    labels: list[int]
    ids: list[str] | None = None
    classes: list[str] | None = None
    groups: list[str] | None = None
    name: str = ""
    token_masks: list[list[Span] | None] | None = None
    provenance: str = ""
    answers: list[str] | None = None

    def __post_init__(self) -> None:
        texts, labels = list(self.texts), list(self.labels)
        n = _check_lengths(self.name, texts=texts, labels=labels, ids=self.ids,
                           groups=self.groups, token_masks=self.token_masks,
                           answers=self.answers)
        where = f"dataset '{self.name}': " if self.name else ""
        texts = [check_text(t, i, "texts", where) for i, t in enumerate(texts)]
        out_labels: list[int] = []
        for i, lab in enumerate(labels):
            if _is_missing(lab):
                raise DataError(f"{where}row {i}, column 'labels' is missing (None/NaN): "
                                "give every row a label")
            if isinstance(lab, bool) or not float(lab).is_integer():
                raise DataError(f"{where}row {i}, column 'labels' is {lab!r}: labels must be "
                                "integer class indices")
            out_labels.append(int(lab))
        if self.classes is None:
            k = max(out_labels, default=-1) + 1
            classes = [str(c) for c in range(max(k, 1))]
        else:
            classes = [str(c) for c in self.classes]
        if not classes or len(set(classes)) != len(classes):
            raise DataError(f"{where}classes {classes} must be non-empty and unique")
        for i, lab in enumerate(out_labels):
            if not 0 <= lab < len(classes):
                raise DataError(f"{where}row {i}, column 'labels' is {lab}, not a class index "
                                f"0..{len(classes) - 1} for classes {classes}: fix the label or "
                                "the class list")
        ids = check_ids(self.ids if self.ids is not None else range(n), "ids", where)
        groups = None
        if self.groups is not None:
            groups = []
            for i, g in enumerate(self.groups):
                if _is_missing(g) or str(g) == "":
                    raise DataError(f"{where}row {i}, column 'groups' is empty: give every row "
                                    "a group or leave groups out")
                groups.append(str(g))
        masks = None
        if self.token_masks is not None:
            masks = []
            for i, spans in enumerate(self.token_masks):
                if spans is None:
                    masks.append(None)
                    continue
                row = []
                for span in spans:
                    s, e = (int(x) for x in span)
                    if not 0 <= s < e <= len(texts[i]):
                        raise DataError(f"{where}row {i}, column 'token_masks' has span "
                                        f"({s}, {e}) outside the text (length {len(texts[i])}): "
                                        "spans are character offsets with start < end")
                    row.append((s, e))
                masks.append(row)
        answers = None
        if self.answers is not None:
            answers = [check_text(a, i, "answers", where) for i, a in enumerate(self.answers)]
        for key, value in (("texts", texts), ("labels", out_labels), ("ids", ids),
                           ("classes", classes), ("groups", groups), ("token_masks", masks),
                           ("answers", answers)):
            object.__setattr__(self, key, value)

    def __len__(self) -> int:
        return len(self.texts)

    def hash(self) -> str:
        """SHA-256 over texts, labels, ids, groups and class names (hex)."""
        payload = {"texts": self.texts, "labels": self.labels, "ids": self.ids,
                   "groups": self.groups, "classes": self.classes}
        if self.answers is not None:
            payload["answers"] = self.answers
        return _content_hash("labeled", payload)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts.get(k, 0) for k, c in enumerate(self.classes)}

    def require_classes(self, n: int = 2) -> LabeledDataset:
        """Raise DataError unless at least ``n`` classes have rows; returns self."""
        present = [c for c, k in self.class_counts().items() if k > 0]
        if len(present) < n:
            raise DataError(f"dataset '{self.name or 'unnamed'}' has {len(present)} class(es) "
                            f"with rows ({present}) but needs at least {n}: add rows of the "
                            "other class(es) (probing needs both sides)")
        return self

    def subset(self, indices: Any, name: str | None = None) -> LabeledDataset:
        """Rows at ``indices`` (ints, array, tensor or boolean mask), in that order."""
        idx = _indices(indices, len(self))
        return LabeledDataset(
            texts=_pick(idx, self.texts), labels=_pick(idx, self.labels),
            ids=_pick(idx, self.ids), classes=list(self.classes),
            groups=_pick(idx, self.groups) if self.groups else None,
            name=self.name if name is None else name,
            token_masks=_pick(idx, self.token_masks) if self.token_masks else None,
            provenance=self.provenance,
            answers=_pick(idx, self.answers) if self.answers is not None else None)

    def label_tensor(self):
        """Labels as ``torch.LongTensor [n_rows]``."""
        import torch

        return torch.tensor(self.labels, dtype=torch.long)

    def as_pairs(self) -> ContrastPairs:
        """Binary rows grouped two by two (one per class) as contrast pairs (label 1 = positive)."""
        if len(self.classes) != 2 or self.groups is None:
            raise DataError(f"dataset '{self.name}' cannot become contrast pairs: it needs two "
                            "classes and groups that tie one row of each class together")
        by_group: dict[str, dict[int, int]] = {}
        for i, (g, lab) in enumerate(zip(self.groups, self.labels, strict=True)):
            slot = by_group.setdefault(g, {})
            if lab in slot:
                raise DataError(f"dataset '{self.name}': group '{g}' has more than one row "
                                f"with label {lab} (rows {slot[lab]} and {i}): each group must "
                                "hold exactly one row per class to form a pair")
            slot[lab] = i
        pos, neg, ids = [], [], []
        for g, slot in by_group.items():
            if set(slot) != {0, 1}:
                raise DataError(f"dataset '{self.name}': group '{g}' lacks a row of class "
                                f"'{self.classes[1 - next(iter(slot))]}': each group needs one "
                                "row per class to form a pair")
            pos.append(self.texts[slot[1]])
            neg.append(self.texts[slot[0]])
            ids.append(g)
        return ContrastPairs(pos, neg, ids, name=self.name, provenance=self.provenance)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "labeled", "rows": len(self),
                "classes": list(self.classes), "class_counts": self.class_counts(),
                "groups": len(set(self.groups)) if self.groups else None,
                "hash": self.hash(), "provenance": self.provenance}


@dataclass(frozen=True)
class ContrastPairs:
    """Matched positive/negative texts (e.g. for steering-vector estimation)."""

    positive: list[str]
    negative: list[str]
    ids: list[str] | None = None
    name: str = ""
    provenance: str = ""

    def __post_init__(self) -> None:
        pos, neg = list(self.positive), list(self.negative)
        n = _check_lengths(self.name, positive=pos, negative=neg, ids=self.ids)
        where = f"dataset '{self.name}': " if self.name else ""
        pos = [check_text(t, i, "positive", where) for i, t in enumerate(pos)]
        neg = [check_text(t, i, "negative", where) for i, t in enumerate(neg)]
        ids = check_ids(self.ids if self.ids is not None else range(n), "ids", where)
        for key, value in (("positive", pos), ("negative", neg), ("ids", ids)):
            object.__setattr__(self, key, value)

    def __len__(self) -> int:
        return len(self.positive)

    def hash(self) -> str:
        return _content_hash("pairs", {"positive": self.positive, "negative": self.negative,
                                       "ids": self.ids})

    def subset(self, indices: Any, name: str | None = None) -> ContrastPairs:
        idx = _indices(indices, len(self))
        return ContrastPairs([self.positive[i] for i in idx], [self.negative[i] for i in idx],
                             [self.ids[i] for i in idx], self.name if name is None else name,
                             self.provenance)

    def as_labeled(self) -> LabeledDataset:
        """Two rows per pair (positive then negative): label 1 / 0, group = pair id."""
        texts, labels, ids, groups = [], [], [], []
        for pid, p, q in zip(self.ids, self.positive, self.negative, strict=True):
            texts += [p, q]
            labels += [1, 0]
            ids += [f"{pid}+", f"{pid}-"]
            groups += [pid, pid]
        return LabeledDataset(texts, labels, ids, ["negative", "positive"], groups,
                              name=self.name, provenance=self.provenance)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "pairs", "rows": len(self), "hash": self.hash(),
                "provenance": self.provenance}


@dataclass(frozen=True)
class PreferenceTriples:
    """A prompt with a chosen and a rejected completion (preference data)."""

    prompt: list[str]
    chosen: list[str]
    rejected: list[str]
    ids: list[str] | None = None
    name: str = ""
    provenance: str = ""

    def __post_init__(self) -> None:
        prompt, chosen, rejected = list(self.prompt), list(self.chosen), list(self.rejected)
        n = _check_lengths(self.name, prompt=prompt, chosen=chosen, rejected=rejected,
                           ids=self.ids)
        where = f"dataset '{self.name}': " if self.name else ""
        prompt = [check_text(t, i, "prompt", where, allow_empty=True) for i, t in enumerate(prompt)]
        chosen = [check_text(t, i, "chosen", where) for i, t in enumerate(chosen)]
        rejected = [check_text(t, i, "rejected", where) for i, t in enumerate(rejected)]
        ids = check_ids(self.ids if self.ids is not None else range(n), "ids", where)
        for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected),
                           ("ids", ids)):
            object.__setattr__(self, key, value)

    def __len__(self) -> int:
        return len(self.prompt)

    def hash(self) -> str:
        return _content_hash("preferences", {"prompt": self.prompt, "chosen": self.chosen,
                                             "rejected": self.rejected, "ids": self.ids})

    def subset(self, indices: Any, name: str | None = None) -> PreferenceTriples:
        idx = _indices(indices, len(self))
        return PreferenceTriples(_pick(idx, self.prompt), _pick(idx, self.chosen),
                                 _pick(idx, self.rejected), _pick(idx, self.ids),
                                 self.name if name is None else name, self.provenance)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "preferences", "rows": len(self),
                "hash": self.hash(), "provenance": self.provenance}
