"""Readers that turn a source (file, in-memory rows, Hugging Face dataset) into records.

A record is a ``dict`` from column name to value. Every reader returns ``(records, columns)``
where ``columns`` lists the column names in source order. Readers only parse; the column
mapping and validation happen in :mod:`reprlab.data.loaders`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.errors import DataError

logger = logging.getLogger(__name__)

Records = tuple[list[dict[str, Any]], list[str]]


def _columns_of(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        for k in rec:
            seen.setdefault(str(k), None)
    return list(seen)


def from_memory(rows: Any, where: str = "in-memory data") -> Records:
    """List of dicts, dict of equal-length lists (columns), or a pandas DataFrame."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        records = [_clean_nan(r) for r in rows.to_dict(orient="records")]
        return records, [str(c) for c in rows.columns]
    if isinstance(rows, dict):
        lengths = {k: len(v) for k, v in rows.items() if isinstance(v, (list, tuple))}
        if len(lengths) != len(rows) or len(set(lengths.values())) > 1:
            raise DataError(f"{where}: a dict must map each column to a list of the same "
                            f"length (got lengths {lengths}); or pass a list of records")
        n = next(iter(lengths.values()), 0)
        return [{k: rows[k][i] for k in rows} for i in range(n)], list(rows)
    if isinstance(rows, (list, tuple)):
        for i, rec in enumerate(rows):
            if not isinstance(rec, dict):
                raise DataError(f"{where}: row {i} is a {type(rec).__name__}, not a record "
                                "(dict of column -> value): pass a list of dicts")
        return list(rows), _columns_of(list(rows))
    raise DataError(f"{where}: cannot read a {type(rows).__name__}; pass a path, a list of "
                    "dicts, a dict of columns, 'builtin:NAME' or 'hf:NAME'")


def _clean_nan(rec: dict[str, Any]) -> dict[str, Any]:
    return {str(k): (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in rec.items()}


def _open_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}): save the file as UTF-8 "
                        "or check that it has the right extension") from None


def read_csv(path: Path, delimiter: str = ",") -> Records:
    text = _open_text(path)
    if "\x00" in text:
        raise DataError(f"{path}: contains NUL bytes, so it is not a CSV file: check the "
                        "file or its extension")
    reader = csv.reader(text.splitlines(), delimiter=delimiter, strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{path}: not parseable as CSV near line {reader.line_num} ({exc}): "
                        "fix the quoting or export the file again") from None
    if not rows or not any(h.strip() for h in rows[0]):
        raise DataError(f"{path}: empty CSV (no header row): the first line must name the "
                        "columns")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header {header}")
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields but the header has "
                            f"{len(header)} ({header}): quote fields that contain "
                            f"'{delimiter}' or fix the row")
        records.append(dict(zip(header, row, strict=True)))
    return records, header


def read_tsv(path: Path) -> Records:
    return read_csv(path, delimiter="\t")


def read_json(path: Path) -> Records:
    text = _open_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno} "
                        f"({exc.msg}): fix the file (JSON Lines files need the .jsonl "
                        "extension)") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in obj[lists[0]]):
            obj = obj[lists[0]]  # {"data": [records]}
        elif lists and len(lists) == len(obj):
            return from_memory(obj, str(path))
    if not isinstance(obj, list):
        raise DataError(f"{path}: JSON must be a list of records (objects), got a "
                        f"{type(obj).__name__}: write [{{\"text\": ..., \"label\": ...}}, ...]")
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: row {i} is a JSON {type(rec).__name__}, not an object: "
                            "the file must be a list of records")
    return obj, _columns_of(obj)


def read_jsonl(path: Path) -> Records:
    records = []
    for line_no, line in enumerate(_open_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no} is not valid JSON ({exc.msg}): each line "
                            "of a .jsonl file must be one JSON object") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {line_no} is a JSON {type(rec).__name__}, not an "
                            "object: each line must be one record")
        records.append(rec)
    return records, _columns_of(records)


def read_parquet(path: Path) -> Records:
    try:
        import pandas as pd
    except ImportError:
        raise DataError("reading Parquet needs pandas and pyarrow: "
                        "pip install 'reprlab[files]'") from None
    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(f"reading Parquet needs pyarrow ({exc}): "
                        "pip install 'reprlab[files]'") from None
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}): check the file "
                        "or its extension") from None
    return from_memory(frame, str(path))


READERS: dict[str, Callable[[Path], Records]] = {
    ".csv": read_csv,
    ".tsv": read_tsv,
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".parquet": read_parquet,
    ".pq": read_parquet,
}


def read_file(path: str | Path) -> Records:
    """Read a local file by extension (see ``READERS``)."""
    p = Path(path).expanduser()
    reader = READERS.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"{p}: unknown data file extension '{p.suffix}': use one of "
                        f"{', '.join(sorted(READERS))}, or 'builtin:NAME' / 'hf:NAME'")
    if not p.is_file():
        raise DataError(f"data file not found: {p} (check the path; built-in sets are "
                        "named 'builtin:NAME')")
    records, columns = reader(p)
    logger.debug("read %d records from %s", len(records), p)
    return records, columns


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``"hf:NAME[:CONFIG][@SPLIT]"`` -> (name, config or None, split; default "train")."""
    body = spec[3:] if spec.startswith("hf:") else spec
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    if not name or not split:
        raise DataError(f"bad Hugging Face dataset spec '{spec}': use "
                        "'hf:NAME[:CONFIG][@SPLIT]', e.g. 'hf:imdb@test'")
    return name, (config or None), split


def read_hf(spec: str, limit: int | None = None, **load_kwargs: Any) -> Records:
    """Load a split with ``datasets.load_dataset`` (``load_kwargs`` pass through, e.g.
    ``data_files`` for the local "json"/"csv" builders)."""
    try:
        import datasets
    except ImportError:
        raise DataError("loading 'hf:' datasets needs the datasets package: "
                        "pip install 'reprlab[hf]'") from None
    name, config, split = parse_hf_spec(spec)
    if limit is not None:
        split = f"{split}[:{int(limit)}]"
    try:
        ds = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except Exception as exc:  # hub, network, config and split errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"cannot load '{spec}' with datasets.load_dataset "
                        f"({type(exc).__name__}: {first}): check the name, config and split, "
                        "or download the dataset first when offline") from exc
    columns = list(ds.column_names)
    return [_clean_nan(dict(r)) for r in ds], columns
