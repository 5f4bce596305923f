"""The reference, computed once: log-probs (and pooled hidden states) of the frozen base model.

Stored in the activation-store layout (``manifest.json`` written last, ``rows.json``, one
memory-mappable single-tensor safetensors file per ``site|position`` key, see
:mod:`reprlab.store`), with manifest kind ``prefs_reference``: site ``logps`` (``[n_rows, 1]``,
summed completion log-probs) and any requested hidden-state sites (``[n_rows, d]``, mean over
completion tokens), each at positions ``chosen`` and ``rejected``.
The key is the request — base model identity, the exact token ids and masks, the sites, the
dtype — hashed like every other store's request, so later runs and seeds with the same model and
data reuse it with no reference forward at all. The directory is written under a temporary
name and renamed into place, so a killed computation never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reprlab.errors import StoreError
from reprlab.io import read_json, sha256_file, write_json
from reprlab.models import LoadedModel
from reprlab.prefs.forward import sequence_logps
from reprlab.prefs.methods import SeqOutputs
from reprlab.prefs.tokenize import TokenizedPrefs, collate
from reprlab.store import (
    FORMAT_VERSION,
    MANIFEST,
    ROWS,
    as_numpy,
    create_tensor_file,
    key,
    map_tensor_file,
)

logger = logging.getLogger(__name__)


def cache_home() -> Path:
    """``$REPRLAB_HOME`` or ``$XDG_CACHE_HOME/reprlab`` or ``~/.cache/reprlab``."""
    if os.environ.get("REPRLAB_HOME"):
        return Path(os.environ["REPRLAB_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reprlab"


@dataclass
class ReferenceTable:
    """Reference outputs of every row: ``batch(rows)`` gives the :class:`SeqOutputs` of rows."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    n_chosen: torch.Tensor
    n_rejected: torch.Tensor
    chosen_hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    rejected_hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None
    cache_hit: bool = False
    forwards: int = 0

    def batch(self, rows: list[int], device: torch.device | str = "cpu") -> SeqOutputs:
        idx = torch.tensor(rows, dtype=torch.long)
        return SeqOutputs(self.chosen[idx].to(device), self.rejected[idx].to(device),
                          self.n_chosen[idx].to(device), self.n_rejected[idx].to(device),
                          {s: v[idx].to(device) for s, v in self.chosen_hidden.items()},
                          {s: v[idx].to(device) for s, v in self.rejected_hidden.items()})


def request(identity: dict, tokens: TokenizedPrefs, sites: tuple[str, ...], dtype: str,
            pool_id: str = "mean:completion") -> dict:
    return {"kind": "prefs_reference", "model": identity, "tokens": tokens.hash(),
            "sites": list(sites), "pool": pool_id if sites else None, "dtype": dtype,
            "format": FORMAT_VERSION}


def request_id(req: dict) -> str:
    return hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:20]


def compute_reference(lm: LoadedModel, tokens: TokenizedPrefs, sites: tuple[str, ...] = (),
                      *, batch_size: int = 8, adapter_off=None, progress: bool = False,
                      pooler=None, recorder=None) -> ReferenceTable:
    """Reference outputs of every row (no grad; inside ``adapter_off()`` when given)."""
    import contextlib

    n = len(tokens)
    order = sorted(range(n), key=lambda i: -tokens.n_tokens([i]))
    sums = torch.zeros(2, n, dtype=torch.float32)
    counts = torch.zeros(2, n, dtype=torch.long)
    hidden = {s: torch.zeros(2, n, lm.arch.hidden_size) for s in sites}
    forwards = 0
    was = lm.model.training
    lm.model.eval()
    ctx = adapter_off() if adapter_off is not None else contextlib.nullcontext()
    bar = tqdm(total=n, desc="reference", unit="pair", disable=not progress)
    try:
        with torch.no_grad(), ctx:
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                s, c, pooled = sequence_logps(lm, collate(tokens, rows, lm.device), sites, pooler,
                                              recorder)
                forwards += 1
                b = len(rows)
                idx = torch.tensor(rows)
                sums[0, idx], sums[1, idx] = s[:b].float().cpu(), s[b:].float().cpu()
                counts[0, idx], counts[1, idx] = c[:b].cpu(), c[b:].cpu()
                for site, v in pooled.items():
                    hidden[site][0, idx], hidden[site][1, idx] = v[:b].float().cpu(), v[b:].float().cpu()
                bar.update(b)
    finally:
        bar.close()
        lm.model.train(was)
    return ReferenceTable(sums[0], sums[1], counts[0], counts[1],
                          {s: v[0] for s, v in hidden.items()},
                          {s: v[1] for s, v in hidden.items()}, forwards=forwards)


def _write(path: Path, table: ReferenceTable, req: dict, rid: str, tokens: TokenizedPrefs,
           hidden_size: int, data_name: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    files = {}
    arrays = {key("logps", "chosen"): table.chosen[:, None], key("logps", "rejected"):
              table.rejected[:, None]}
    for s in table.chosen_hidden:
        arrays[key(s, "chosen")] = table.chosen_hidden[s]
        arrays[key(s, "rejected")] = table.rejected_hidden[s]
    for i, (k, t) in enumerate(arrays.items()):
        rel = f"data/{i:04d}.safetensors"
        site, position = k.rsplit("|", 1)
        m = create_tensor_file(tmp / rel, torch.float32, tuple(t.shape),
                               {"site": site, "position": position})
        m[:] = as_numpy(t.float())
        if hasattr(m, "flush"):
            m.flush()
        del m
        files[k] = {"file": rel, "bytes": (tmp / rel).stat().st_size,
                    "sha256": sha256_file(tmp / rel)}
    write_json(tmp / ROWS, {"ids": tokens.ids, "labels": None, "classes": None, "groups": None,
                            "texts": None, "lengths": [tokens.n_tokens([i]) for i in range(len(tokens))],
                            "completion_tokens": [table.n_chosen.tolist(), table.n_rejected.tolist()]})
    write_json(tmp / MANIFEST, {
        "kind": "prefs_reference", "format": FORMAT_VERSION, "request_id": rid,
        "request": req, "model": req["model"],
        "data": {"name": data_name, "hash": req["tokens"], "rows": len(tokens)},
        "sites": ["logps", *table.chosen_hidden], "site_layers": {},
        "positions": ["chosen", "rejected"], "dtype": "float32", "n_rows": len(tokens),
        "hidden_size": hidden_size, "files": files, "purpose": "preference reference",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _read(path: Path, sites: tuple[str, ...]) -> ReferenceTable:
    manifest = read_json(path / MANIFEST)
    files = manifest["files"]
    for entry in files.values():
        f = path / entry["file"]
        if not f.exists() or f.stat().st_size != entry["bytes"]:
            raise StoreError(f"{f} is missing or truncated")

    def get(site: str, position: str) -> torch.Tensor:
        return map_tensor_file(path / files[key(site, position)]["file"]).clone()
    counts = read_json(path / ROWS)["completion_tokens"]
    return ReferenceTable(
        get("logps", "chosen")[:, 0], get("logps", "rejected")[:, 0],
        torch.tensor(counts[0]), torch.tensor(counts[1]),
        {s: get(s, "chosen") for s in sites}, {s: get(s, "rejected") for s in sites},
        path=path, cache_hit=True)


def cached_reference(lm: LoadedModel, identity: dict, tokens: TokenizedPrefs,
                     sites: tuple[str, ...] = (), *, root: str | Path | None = None,
                     batch_size: int = 8, adapter_off=None, progress: bool = False,
                     data_name: str = "", pooler=None, recorder=None,
                     pool_id: str = "mean:completion") -> ReferenceTable:
    """The reference of ``tokens`` from the cache under ``root``, computing it once if absent.

    ``identity`` is the base model's :meth:`LoadedModel.identity` taken *before* an adapter was
    injected (adapter weights change the fingerprint).
    """
    root = Path(root) if root is not None else cache_home() / "refcache"
    req = request(identity, tokens, tuple(sites), str(lm.dtype).replace("torch.", ""), pool_id)
    rid = request_id(req)
    path = root / rid
    if (path / MANIFEST).exists():
        try:
            if read_json(path / MANIFEST).get("request_id") == rid:
                logger.info("reference cache hit: %s", path)
                return _read(path, tuple(sites))
        except Exception as exc:  # an unreadable entry is recomputed
            logger.warning("reference cache %s unreadable (%s); recomputing", path, exc)
    table = compute_reference(lm, tokens, tuple(sites), batch_size=batch_size,
                              adapter_off=adapter_off, progress=progress, pooler=pooler,
                              recorder=recorder)
    root.mkdir(parents=True, exist_ok=True)
    _write(path, table, req, rid, tokens, lm.arch.hidden_size, data_name)
    table.path = path
    return table
