"""ActivationStore: captured activations on disk, memory-mapped for reading.

Layout of a store directory::

    manifest.json            written last: model identity, dataset hash, sites, positions,
                             dtype, rows, files with byte sizes and sha256, versions, command
    rows.json                row ids, labels, classes, groups (pair/template ids), texts, lengths
    data/NNNN.safetensors    one tensor "data" per (site, position): [n_rows, d], or
                             [n_tokens, d] for position "all"
    data/tokens.safetensors  "data" = (row, token) ids [n_tokens, 2] for position "all"
    .partial/                chunks of an unfinished capture (removed when it completes)

A directory without ``manifest.json`` is incomplete and is refused. Every data file is a valid
safetensors file holding a single tensor, laid out so that it can be memory-mapped directly.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprlab.errors import SiteError, StoreError
from reprlab.io import read_json, sha256_file

MANIFEST = "manifest.json"
ROWS = "rows.json"
FORMAT_VERSION = 1

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32"}
_NP_VIEW = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
            "I32": np.int32}
_TORCH_OF = {v: k for k, v in _ST_DTYPES.items()}


def key(site: str, position: str) -> str:
    return f"{site}|{position}"


# -- single-tensor safetensors files that can be filled in place ------------------------
def _header(dtype: torch.dtype, shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.tensor([], dtype=dtype).element_size()
    head = {"__metadata__": metadata,
            "data": {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}}
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # align the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def create_tensor_file(path: Path, dtype: torch.dtype, shape: tuple[int, ...],
                       metadata: dict[str, str] | None = None) -> np.memmap:
    """Create a safetensors file of the given shape and return a writable map of its data."""
    head = _header(dtype, shape, metadata or {})
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.tensor([], dtype=dtype).element_size()
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + nbytes)
    if nbytes == 0:
        return np.zeros(shape, dtype=_NP_VIEW[_ST_DTYPES[dtype]])
    return np.memmap(path, dtype=_NP_VIEW[_ST_DTYPES[dtype]], mode="r+", offset=len(head),
                     shape=shape)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (bf16 viewed as uint16) for writing into a map."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def map_tensor_file(path: Path) -> torch.Tensor:
    """Memory-map the single tensor of a file made by :func:`create_tensor_file`."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            head = json.loads(fh.read(hlen))
        info = head["data"]
        start, end = info["data_offsets"]
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise StoreError(f"{path} is not a readable activation file ({exc}); capture again") from None
    if size != 8 + hlen + end:
        raise StoreError(f"{path} is truncated or corrupt ({size} bytes, expected "
                         f"{8 + hlen + end}); delete the store and capture again")
    shape = tuple(info["shape"])
    np_dtype = _NP_VIEW[info["dtype"]]
    if end - start == 0:
        return torch.zeros(shape, dtype=_TORCH_OF[info["dtype"]])
    arr = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + hlen + start, shape=shape)
    t = torch.from_numpy(arr)
    if info["dtype"] == "BF16":
        t = t.view(torch.bfloat16)
    return t


class ActivationStore:
    """Read access to a finished capture.

    ``store[site, position]`` is a memory-mapped tensor ``[n_rows, d]`` (``[n_tokens, d]`` for
    position ``"all"``, with ids in :attr:`token_index`). Labels, classes, groups and ids come
    from the dataset the store was captured from.
    """

    def __init__(self, path: Path, manifest: dict, rows: dict):
        self.path = path
        self.manifest = manifest
        self._rows = rows
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_hit = False
        self.stats: dict[str, int] = {}

    @classmethod
    def open(cls, path: str | Path, expect_model: dict | None = None) -> ActivationStore:
        """Open a finished store; refuses incomplete, corrupt or mismatching stores."""
        p = Path(path)
        if not p.is_dir():
            raise StoreError(f"no activation store at {p}; run `reprlab capture --out {p}` first")
        if not (p / MANIFEST).exists():
            what = "an unfinished capture" if (p / ".partial").exists() else "no manifest.json"
            raise StoreError(f"{p} is not a complete activation store ({what}); "
                             "run the same capture command again to finish it")
        try:
            manifest = read_json(p / MANIFEST)
            rows = read_json(p / ROWS)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{p} has an unreadable manifest or rows file ({exc}); "
                             "capture again") from None
        if manifest.get("kind") != "activation_store":
            raise StoreError(f"{p} is not an activation store (manifest kind "
                             f"{manifest.get('kind')!r})")
        for entry in manifest["files"].values():
            f = p / entry["file"]
            if not f.exists():
                raise StoreError(f"{p} is missing {entry['file']}; capture again")
            if f.stat().st_size != entry["bytes"]:
                raise StoreError(f"{f} is truncated or corrupt ({f.stat().st_size} bytes, "
                                 f"expected {entry['bytes']}); delete the store and capture again")
        store = cls(p, manifest, rows)
        if expect_model is not None:
            store.check_model(expect_model)
        return store

    # -- identity --------------------------------------------------------------------------
    def check_model(self, identity: dict | Any) -> None:
        """Raise when this store was captured from a different model."""
        if hasattr(identity, "identity"):
            identity = identity.identity()
        mine = self.manifest["model"]
        for k in ("config_hash", "weights_fingerprint", "hidden_size", "n_layers"):
            if k in identity and k in mine and identity[k] != mine[k]:
                raise StoreError(
                    f"store {self.path} was captured from {mine.get('name')!r}, not from "
                    f"{identity.get('name')!r} ({k} differs); capture again with this model")

    # -- contents --------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def positions(self) -> list[str]:
        return list(self.manifest["positions"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def ids(self) -> list[str]:
        return list(self._rows["ids"])

    @property
    def texts(self) -> list[str] | None:
        return self._rows.get("texts")

    @property
    def labels(self) -> torch.Tensor | None:
        labels = self._rows.get("labels")
        return None if labels is None else torch.tensor(labels, dtype=torch.long)

    @property
    def classes(self) -> list[str] | None:
        return self._rows.get("classes")

    @property
    def groups(self) -> list[str] | None:
        return self._rows.get("groups")

    @property
    def lengths(self) -> list[int]:
        return list(self._rows["lengths"])

    def layer_of(self, site: str) -> int | None:
        """Depth of ``site`` (-1 embed, block index, n_layers for final_norm, None otherwise)."""
        return self.manifest["site_layers"].get(site)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return key(*item) in self.manifest["files"]

    def __getitem__(self, item: tuple[str, str]) -> torch.Tensor:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise SiteError("index a store with store[site, position], e.g. store['layers.3', 'mean']")
        site, position = item
        k = key(site, str(position))
        if k not in self.manifest["files"]:
            if site not in self.sites:
                raise SiteError(f"site {site!r} is not in the store at {self.path}; "
                                f"it holds {', '.join(self.sites)}")
            raise SiteError(f"position {position!r} is not in the store at {self.path}; "
                            f"it holds {', '.join(self.positions)}")
        if k not in self._cache:
            self._cache[k] = map_tensor_file(self.path / self.manifest["files"][k]["file"])
        return self._cache[k]

    def stack(self, sites: list[str], position: str) -> torch.Tensor:
        """``[len(sites), n_rows, d]`` float32 tensor of several sites (one copy)."""
        return torch.stack([self[s, position].float() for s in sites])

    @property
    def token_index(self) -> torch.Tensor:
        """(row, token) ids of the flattened ``all`` position, ``[n_tokens, 2]``."""
        if "tokens" not in self.manifest["files"]:
            raise SiteError(f"the store at {self.path} was captured without position 'all'")
        return map_tensor_file(self.path / self.manifest["files"]["tokens"]["file"])

    def verify(self) -> None:
        """Check every data file against the sha256 in the manifest (reads everything)."""
        for entry in self.manifest["files"].values():
            if sha256_file(self.path / entry["file"]) != entry["sha256"]:
                raise StoreError(f"{self.path / entry['file']} does not match its checksum; "
                                 "capture again")

    def info(self) -> dict:
        """Summary for `reprlab store info`."""
        size = sum(e["bytes"] for e in self.manifest["files"].values())
        m = self.manifest
        return {
            "path": str(self.path), "model": m["model"].get("name"),
            "model_config_hash": m["model"].get("config_hash"),
            "dataset": m["data"].get("name"), "dataset_hash": m["data"].get("hash"),
            "rows": self.n_rows, "tokens": m.get("n_tokens"), "hidden_size": self.hidden_size,
            "dtype": self.dtype, "sites": self.sites, "positions": self.positions,
            "labels": self.classes if self.classes else None,
            "size_bytes": size, "size": _human(size),
        }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
