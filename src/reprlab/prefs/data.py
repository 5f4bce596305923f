"""Preference triples from every source we read, including conversational (chat) shapes.

Sources: ``builtin:NAME``, a :class:`~reprlab.data.PreferenceTriples` (or contrast pairs, read
as an empty prompt with the positive text chosen), in-memory rows, files
(csv/json/jsonl/parquet) and ``hf:NAME[:CONFIG][@SPLIT]``. Two row shapes are understood:

- plain columns ``prompt`` / ``chosen`` / ``rejected`` holding texts (GENIES-style sets);
- chat columns, where ``chosen`` / ``rejected`` are message lists ending with the assistant
  reply and the prompt is a column or the messages before that reply
  (``HuggingFaceH4/ultrafeedback_binarized``).

Only single-turn prompts are accepted from chat rows (the last user message); the completion is
the final assistant message. Rows whose chosen and rejected completions are identical are
refused: they carry no preference.
"""

from __future__ import annotations

from typing import Any

from reprlab.data import ContrastPairs, PreferenceTriples
from reprlab.errors import DataError


def _is_messages(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, dict) and "content" in m for m in value))


def _last(messages: list[dict], role: str) -> str | None:
    for m in reversed(messages):
        if m.get("role") == role:
            return m.get("content")
    return None


def normalise_record(rec: dict, i: int, where: str, prompt_col: str, chosen_col: str,
                     rejected_col: str) -> dict:
    """One record -> ``{"prompt", "chosen", "rejected"}`` texts (chat shapes flattened)."""
    out = dict(rec)
    for col in (chosen_col, rejected_col):
        value = rec.get(col)
        if _is_messages(value):
            reply = value[-1]
            if reply.get("role") != "assistant":
                raise DataError(f"{where}row {i}, column '{col}': the last message is from "
                                f"{reply.get('role')!r}, not the assistant; the completion must be "
                                "the final assistant reply")
            out[col] = reply.get("content")
            if prompt_col not in rec or rec.get(prompt_col) in (None, ""):
                user = _last(list(value[:-1]), "user")
                if user is None:
                    raise DataError(f"{where}row {i}: no prompt column '{prompt_col}' and no "
                                    f"user message before the reply in '{col}'")
                out[prompt_col] = user
    prompt = out.get(prompt_col)
    if _is_messages(prompt):
        user = _last(list(prompt), "user")
        if user is None:
            raise DataError(f"{where}row {i}, column '{prompt_col}' has no user message")
        out[prompt_col] = user
    return out


def load_preferences(spec: Any, *, limit: int | None = None, prompt_col: str = "prompt",
                     chosen_col: str = "chosen", rejected_col: str = "rejected",
                     name: str | None = None, **hf_kwargs: Any) -> PreferenceTriples:
    """Load and validate preference triples (see the module docstring for shapes)."""
    from reprlab.data import load_dataset
    from reprlab.data.loaders import build_preferences, read_records

    if isinstance(spec, str) and spec.startswith("builtin:"):
        from reprlab.data.builtins import BUILTINS

        kind = BUILTINS[spec[8:]].kind if spec[8:] in BUILTINS else "preferences"
        spec = load_dataset(spec, kind="pairs" if kind == "pairs" else "preferences",
                            limit=limit)
    if isinstance(spec, ContrastPairs):
        spec = PreferenceTriples([""] * len(spec), list(spec.positive), list(spec.negative),
                                 list(spec.ids), name=spec.name,
                                 provenance=spec.provenance + " (contrast pairs as preferences: "
                                 "empty prompt, positive chosen)")
    if isinstance(spec, PreferenceTriples):
        ds = spec if limit is None else spec.subset(range(min(limit, len(spec))))
    else:
        records, columns, default, where = read_records(spec, limit, **hf_kwargs)
        for role, col in (("chosen", chosen_col), ("rejected", rejected_col)):
            if col not in columns:
                raise DataError(f"{where}no column '{col}' for the {role} completions (pass "
                                f"--{role}-col NAME); columns found: {columns}")
        records = [normalise_record(r, i, where, prompt_col, chosen_col, rejected_col)
                   for i, r in enumerate(records)]
        columns = list(dict.fromkeys([*columns, prompt_col]))
        if all(r.get(prompt_col) is None for r in records):
            raise DataError(f"{where}no column '{prompt_col}' for the prompts (pass "
                            f"--prompt-col NAME); columns found: {columns[:-1]}")
        ds = build_preferences(records, columns, name=default if name is None else name,
                               where=where, prompt_col=prompt_col, chosen_col=chosen_col,
                               rejected_col=rejected_col)
    check_distinct(ds)
    return ds


def check_distinct(ds: PreferenceTriples) -> None:
    """Refuse rows whose chosen and rejected completions are the same text."""
    same = [i for i, (c, r) in enumerate(zip(ds.chosen, ds.rejected, strict=True))
            if c.strip() == r.strip()]
    if same:
        where = f"dataset '{ds.name}': " if ds.name else ""
        raise DataError(f"{where}row {same[0]} has the same chosen and rejected completion "
                        f"({len(same)} such row(s)): a pair must differ; fix or drop them")
