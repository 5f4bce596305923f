"""Batched, no-grad capture of activations into an :class:`~reprlab.store.ActivationStore`.

What makes it fast: rows are sorted by token length so each batch carries little padding
(length buckets), the forward stops right after the deepest requested site, and pooling
happens inside the hook so only ``[B, d]`` per site and position leaves the model.

What makes it safe: work is split into chunks written atomically under ``.partial/``; a run
killed at any point and started again skips finished chunks and yields the same store, byte
for byte. The final files are allocated for real (a full disk is one clear line before any
work, never a SIGBUS later) and filled from the chunks with ``pwrite``, and ``manifest.json``
is written last. The same request twice is a cache hit that runs no forward pass. One capture
at a time writes into a directory (``.lock``); a second one says who holds it.

Memory: no long-lived map of the final files is kept, so written pages stay in the page cache
rather than in the process. Peak RSS is the model and its activations for one batch plus about
three copies of one chunk (``chunk_rows`` rows x every site and position x width x dtype size);
it does not grow with the number of rows beyond that (``tests/test_capture_memory.py``).

Threads: each batch's forward runs at :func:`reprlab._threads.for_forward`'s count (one
thread for small batches on small models, the free cores for big products; ``threads=`` /
``REPRLAB_THREADS`` override it), and the caller's torch thread count is restored after.

Texts longer than ``max_length`` tokens are truncated; ``max_length`` itself is clamped to the
model's position limit. The store's manifest counts the truncated rows (``n_truncated``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from reprlab import _threads, hooks
from reprlab.errors import ConfigError, DataError, StoreError
from reprlab.io import (
    atomic_write_bytes,
    check_free_space,
    disk_errors,
    ensure_writable_dir,
    fsync_dir,
    read_json,
    sha256_file,
    write_json,
)
from reprlab.lock import LOCK_NAME, dir_lock
from reprlab.models import LoadedModel, as_loaded, parse_dtype
from reprlab.positions import flatten, parse_positions, pool
from reprlab.sites import Site, resolve_sites
from reprlab.store import (
    FORMAT_VERSION,
    MANIFEST,
    ROWS,
    ActivationStore,
    TensorFileWriter,
    as_numpy,
    key,
    read_tensor_header,
)

logger = logging.getLogger(__name__)


@dataclass
class Rows:
    """The texts to capture, with whatever labels and ids the dataset carries."""

    texts: list[str]
    ids: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = None
    groups: list[str] | None = None
    spans: list[Any] | None = None
    name: str = ""
    hash: str = ""

    @classmethod
    def from_any(cls, data: Any, **load_kwargs: Any) -> Rows:
        """Accept a dataset object, a spec string (``builtin:cities``, a file) or a list of texts."""
        if isinstance(data, str):
            from reprlab.data import load_dataset

            data = load_dataset(data, **load_kwargs)
        if hasattr(data, "as_labeled") and not hasattr(data, "texts"):
            data = data.as_labeled()
        if isinstance(data, Sequence) and not isinstance(data, str):
            texts = [str(t) for t in data]
            if not texts:
                raise DataError("no texts to capture; pass at least one")
            for i, t in enumerate(texts):
                if not t.strip():
                    raise DataError(f"row {i}: empty text; remove it or fill it in")
            h = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()
            return cls(texts=texts, ids=[str(i) for i in range(len(texts))], name="texts", hash=h)
        if not hasattr(data, "texts"):
            raise DataError(f"cannot capture from a {type(data).__name__}; pass texts, a "
                            "dataset or a spec such as builtin:cities")
        labels = getattr(data, "labels", None)
        return cls(
            texts=list(data.texts), ids=[str(i) for i in data.ids],
            labels=None if labels is None else [int(v) for v in labels],
            classes=list(getattr(data, "classes", None) or []) or None,
            groups=list(data.groups) if getattr(data, "groups", None) is not None else None,
            spans=getattr(data, "token_masks", None), name=getattr(data, "name", ""),
            hash=data.hash() if callable(getattr(data, "hash", None)) else "",
        )

    def describe(self) -> dict:
        return {"name": self.name, "hash": self.hash, "rows": len(self.texts),
                "classes": self.classes}


def _request(lm: LoadedModel, rows: Rows, sites: list[Site], positions: list[str],
             dtype: str, max_length: int) -> dict:
    return {"model": lm.identity(), "data_hash": rows.hash, "sites": [s.name for s in sites],
            "positions": positions, "dtype": dtype, "max_length": max_length,
            "format": FORMAT_VERSION}


def _request_id(req: dict) -> str:
    return hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:20]


def _plan(lengths: list[int], batch_size: int, chunk_rows: int) -> list[list[list[int]]]:
    """Chunks of batches of row indices, longest rows first (stable, deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    chunks: list[list[list[int]]] = []
    current: list[list[int]] = []
    n = 0
    for b in batches:
        current.append(b)
        n += len(b)
        if n >= chunk_rows:
            chunks.append(current)
            current, n = [], 0
    if current:
        chunks.append(current)
    return chunks


def _token_counts(tok: Any, texts: list[str], block: int = 256) -> list[int]:
    """Untruncated token count of each text, tokenized a block at a time (memory: one block)."""
    out: list[int] = []
    for i in range(0, len(texts), block):
        out += [len(ids) for ids in tok(texts[i:i + block], add_special_tokens=True)["input_ids"]]
    return out


def _span_mask(offsets: torch.Tensor, spans: list[Any] | None, mask: torch.Tensor) -> torch.Tensor:
    """[T] mask of tokens whose character range lies inside any of ``spans``."""
    out = torch.zeros_like(mask)
    if not spans:
        return out
    for span in spans:
        s, e = int(span[0]), int(span[1])
        inside = (offsets[:, 0] >= s) & (offsets[:, 1] <= e) & (offsets[:, 1] > offsets[:, 0])
        out |= inside.to(out.dtype)
    return out * mask


class _Batch:
    def __init__(self, lm: LoadedModel, rows: Rows, idx: list[int], max_length: int,
                 need_special: bool, need_spans: bool):
        tok = lm.tokenizer
        enc = tok([rows.texts[i] for i in idx], return_tensors="pt", padding=True,
                  truncation=True, max_length=max_length,
                  return_special_tokens_mask=need_special,
                  return_offsets_mapping=need_spans and getattr(tok, "is_fast", False))
        self.inputs = lm.forward_inputs(enc)
        mask = enc["attention_mask"]
        self.mask = mask.to(lm.device)
        self.content = None
        if need_special:
            self.content = (mask * (1 - enc["special_tokens_mask"])).to(lm.device)
        self.spans = None
        if need_spans:
            if "offset_mapping" not in enc:
                raise ConfigError("position mean:span needs a fast tokenizer with offsets")
            self.spans = torch.stack([
                _span_mask(enc["offset_mapping"][j], rows.spans[i] if rows.spans else None,
                           mask[j]) for j, i in enumerate(idx)]).to(lm.device)


def capture(model: LoadedModel | str | None, data: Any, sites: str | Sequence[str] = "layers.*",
            positions: str | Sequence[str] = ("last", "mean"), out: str | Path = "runs/capture",
            *, batch_size: int = 32, dtype: str = "float32", device: str | None = "cpu",
            model_dtype: str = "float32", max_length: int = 512, chunk_rows: int = 1024,
            overwrite: bool = False, progress: bool = True, threads: int | None = None,
            **load_kwargs: Any) -> ActivationStore:
    """Capture activations of ``data`` at ``sites`` × ``positions`` into a store at ``out``.

    Args:
        model: a :class:`LoadedModel` or a name/path (``"minilm"`` by default).
        data: texts, a dataset object or a spec (``"builtin:cities"``, ``"file.csv"``).
        sites: site grammar, see :mod:`reprlab.sites`.
        positions: see :mod:`reprlab.positions`; ``"all"`` keeps every non-padding token.
        out: store directory. An identical finished request there is returned as is.
        batch_size: rows per forward pass.
        dtype: storage dtype (float32, float16, bfloat16).
        device / model_dtype: where and in which dtype to run a model given by name.
        chunk_rows: rows per resumable chunk.
        overwrite: replace a store that holds a different request.
        threads: torch threads for the forwards (None: :mod:`reprlab._threads`' policy per
            batch, i.e. ``REPRLAB_THREADS`` / ``set_threads`` if set, else one thread unless
            the batch's largest linear product is big enough to use the free cores); the
            caller's setting is restored afterwards.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    store_dtype = parse_dtype(dtype)
    dtype_name = {torch.float32: "float32", torch.float16: "float16",
                  torch.bfloat16: "bfloat16"}[store_dtype]
    rows = Rows.from_any(data, **load_kwargs)
    pos_list = parse_positions(positions)
    if "mean:span" in pos_list and not rows.spans:
        raise ConfigError("position mean:span needs token spans in the dataset (token_masks)")
    out = ensure_writable_dir(out)
    lm = as_loaded(model, device=device, dtype=model_dtype)
    max_length = lm.clamp_length(max_length)
    site_list = resolve_sites(lm, sites)
    with dir_lock(out, what="a capture"):
        return _capture_locked(lm, rows, site_list, pos_list, out, store_dtype, dtype_name,
                               batch_size, max_length, chunk_rows, overwrite, progress,
                               threads)


def _capture_locked(lm: LoadedModel, rows: Rows, site_list: list[Site], pos_list: list[str],
                    out: Path, store_dtype: torch.dtype, dtype_name: str, batch_size: int,
                    max_length: int, chunk_rows: int, overwrite: bool,
                    progress: bool, threads: int | None = None) -> ActivationStore:
    req = _request(lm, rows, site_list, pos_list, dtype_name, max_length)
    rid = _request_id(req)

    if (out / MANIFEST).exists():
        try:
            prev = read_json(out / MANIFEST)
        except (OSError, ValueError):
            prev = {}
        if prev.get("request_id") == rid:
            store = ActivationStore.open(out)
            # a run killed after its manifest but before clean-up left chunks behind
            shutil.rmtree(out / ".partial", ignore_errors=True)
            store.cache_hit = True
            logger.info("cache hit: %s already holds this capture", out)
            return store
        if not overwrite:
            raise StoreError(f"{out} already holds a different capture (model "
                             f"{prev.get('model', {}).get('name')!r}, data "
                             f"{prev.get('data', {}).get('name')!r}); use another --out or --overwrite")
        _clear(out)
    elif any(out.iterdir()) and not (out / ".partial").exists() and overwrite is False:
        existing = [p.name for p in out.iterdir()]
        if set(existing) - {ROWS, "data", LOCK_NAME}:
            raise StoreError(f"{out} is not empty and is not a reprlab store; choose an empty --out")

    partial = out / ".partial"
    partial.mkdir(exist_ok=True)
    tok = lm.tokenizer
    full = _token_counts(tok, rows.texts)
    lengths = [min(n, max_length) for n in full]
    n_truncated = sum(n > max_length for n in full)
    if n_truncated:
        logger.warning("%d of %d texts are longer than %d tokens and were truncated",
                       n_truncated, len(full), max_length)
    plan = _plan(lengths, batch_size, chunk_rows)
    plan_id = hashlib.sha256(json.dumps([rid, plan]).encode()).hexdigest()[:20]
    plan_file = partial / "plan.json"
    if plan_file.exists() and read_json(plan_file).get("plan_id") != plan_id:
        logger.warning("unfinished capture in %s was for another request; starting over", out)
        shutil.rmtree(partial)
        partial.mkdir()
    write_json(plan_file, {"plan_id": plan_id, "request_id": rid, "n_chunks": len(plan)})

    need_special = "mean:content" in pos_list
    need_spans = "mean:span" in pos_list
    pooled_positions = [p for p in pos_list if p != "all"]
    stop = True
    delay = float(os.environ.get("REPRLAB_CHUNK_DELAY", "0") or 0)  # test aid: slow chunks down
    done = {p.name for p in partial.glob("chunk-*.safetensors")}
    resumed = 0
    bar = tqdm(total=len(rows.texts), desc=f"capture {lm.name.split('/')[-1]}", unit="row",
               disable=not progress)
    was_training = lm.model.training
    lm.model.eval()
    try:
        for c, chunk in enumerate(plan):
            name = f"chunk-{c:05d}.safetensors"
            n_chunk = sum(len(b) for b in chunk)
            if name in done:
                resumed += 1
                bar.update(n_chunk)
                continue
            tensors = _run_chunk(lm, rows, chunk, site_list, pooled_positions, "all" in pos_list,
                                 store_dtype, max_length, need_special, need_spans, stop,
                                 threads)
            from safetensors.torch import save

            blob = save(tensors)
            del tensors
            with disk_errors(partial, len(blob)):
                atomic_write_bytes(partial / name, blob)
            del blob
            bar.update(n_chunk)
            if delay:
                time.sleep(delay)
    finally:
        bar.close()
        lm.model.train(was_training)

    _consolidate(out, partial, plan, rows, lengths, site_list, pos_list, store_dtype,
                 lm.arch.hidden_size)
    manifest = _manifest(out, lm, rows, site_list, pos_list, dtype_name, max_length, req, rid,
                         lengths, batch_size)
    manifest["n_truncated"] = n_truncated
    with disk_errors(out):
        write_json(out / MANIFEST, manifest)
    fsync_dir(out)
    shutil.rmtree(partial, ignore_errors=True)
    # the hashes were just computed from these files: check structure, not content, again
    store = ActivationStore.open(out, verify=False)
    store.stats = {"chunks": len(plan), "resumed_chunks": resumed, "truncated_rows": n_truncated}
    if resumed:
        logger.info("resumed: %d of %d chunks were already done", resumed, len(plan))
    return store


def _run_chunk(lm: LoadedModel, rows: Rows, chunk: list[list[int]], sites: list[Site],
               positions: list[str], keep_all: bool, store_dtype: torch.dtype, max_length: int,
               need_special: bool, need_spans: bool, stop: bool,
               threads: int | None = None) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    row_index: list[int] = []
    for idx in chunk:
        batch = _Batch(lm, rows, idx, max_length, need_special, need_spans)

        def reduce(name: str, h: torch.Tensor, batch: _Batch = batch) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            hf = h.float()
            for p in positions:
                content = batch.content if p == "mean:content" else batch.spans
                out[p] = pool(hf, batch.mask, p, content).to("cpu", store_dtype)
            if keep_all:
                flat, ids = flatten(hf, batch.mask)
                out["all"] = flat.to("cpu", store_dtype)
                out["__ids"] = ids.cpu()
            return out

        with _threads.for_forward(lm, batch.mask.numel(), threads), torch.inference_mode(), \
                hooks.record(lm, sites, transform=reduce, stop=stop) as cache:
            hooks.run_until_stop(lambda batch=batch: lm.model(**batch.inputs))
        missing = [s.name for s in sites if s.name not in cache]
        if missing:
            raise StoreError(f"sites {missing} were not reached in the forward pass; "
                             "check that they belong to this model's forward")
        for s in sites:
            for p, t in cache[s.name].items():
                if p == "__ids":
                    continue
                parts.setdefault(key(s.name, p), []).append(t)
        if keep_all:
            ids = cache[sites[0].name]["__ids"].clone()
            ids[:, 0] = torch.tensor(idx)[ids[:, 0]]
            parts.setdefault("__token_ids", []).append(ids)
        row_index.extend(idx)
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    tensors["__rows"] = torch.tensor(row_index, dtype=torch.long)
    return tensors


def _consolidate(out: Path, partial: Path, plan: list, rows: Rows, lengths: list[int],
                 sites: list[Site], positions: list[str], store_dtype: torch.dtype,
                 hidden: int) -> None:
    """Fill the final files in original row order, one chunk in memory at a time."""
    from safetensors import safe_open

    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    n = len(rows.texts)
    n_tokens = sum(lengths)
    offsets = [0]
    for ln in lengths:
        offsets.append(offsets[-1] + ln)
    names: dict[str, str] = {}
    specs: dict[str, tuple[torch.dtype, tuple[int, int], dict[str, str]]] = {}
    i = 0
    for s in sites:
        for p in positions:
            shape = (n_tokens, hidden) if p == "all" else (n, hidden)
            names[key(s.name, p)] = f"data/{i:04d}.safetensors"
            specs[key(s.name, p)] = (store_dtype, shape, {"site": s.name, "position": p})
            i += 1
    if "all" in positions:
        names["tokens"] = "data/tokens.safetensors"
        specs["tokens"] = (torch.int64, (n_tokens, 2), {"columns": "row,token"})
    item = {k: torch.tensor([], dtype=d).element_size() for k, (d, _, _) in specs.items()}
    needed = sum(shape[0] * shape[1] * item[k] + 4096 for k, (_, shape, _) in specs.items())
    check_free_space(out, needed)
    files = {k: TensorFileWriter(out / names[k], d, shape, meta)
             for k, (d, shape, meta) in specs.items()}
    offs = np.asarray(offsets, dtype=np.int64)
    for c in range(len(plan)):
        with safe_open(str(partial / f"chunk-{c:05d}.safetensors"), framework="pt") as f:
            order = f.get_tensor("__rows").numpy()
            starts = None
            if "all" in positions:
                tok_ids = f.get_tensor("__token_ids").numpy()
                # destination of each flattened token: offset of its row + token id
                starts = offs[tok_ids[:, 0]] + tok_ids[:, 1]
                files["tokens"].write_rows(starts, tok_ids)
            for s in sites:
                for p in positions:
                    k = key(s.name, p)
                    files[k].write_rows(starts if p == "all" else order, as_numpy(f.get_tensor(k)))
    for w in files.values():
        w.close()
    with disk_errors(out):
        write_json(out / ROWS, {
            "ids": rows.ids, "labels": rows.labels, "classes": rows.classes,
            "groups": rows.groups, "texts": rows.texts, "lengths": lengths,
        })
        write_json(partial / "names.json", names)


def _manifest(out: Path, lm: LoadedModel, rows: Rows, sites: list[Site], positions: list[str],
              dtype: str, max_length: int, req: dict, rid: str, lengths: list[int],
              batch_size: int) -> dict:
    from reprlab.cliutil import command_line
    from reprlab.report import environment_versions

    names = read_json(out / ".partial" / "names.json")
    files = {}
    for k, rel in names.items():
        f = out / rel
        _, head = read_tensor_header(f)
        files[k] = {"file": rel, "bytes": f.stat().st_size, "sha256": sha256_file(f),
                    "shape": list(head["data"]["shape"]), "dtype": head["data"]["dtype"]}
    return {
        "kind": "activation_store", "format": FORMAT_VERSION, "request_id": rid,
        "model": req["model"], "data": rows.describe(), "sites": [s.name for s in sites],
        "site_layers": {s.name: s.layer for s in sites}, "positions": positions,
        "dtype": dtype, "max_length": max_length, "batch_size": batch_size,
        "n_rows": len(rows.texts), "n_tokens": sum(lengths),
        "hidden_size": lm.arch.hidden_size, "files": files,
        "rows_sha256": sha256_file(out / ROWS),
        "versions": environment_versions(), "command_line": command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _clear(out: Path) -> None:
    for name in (MANIFEST, ROWS):
        (out / name).unlink(missing_ok=True)
    for d in ("data", ".partial"):
        shutil.rmtree(out / d, ignore_errors=True)
