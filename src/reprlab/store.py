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

The manifest is checked, not trusted, on open: every file path must lie inside the store; every
file's size, tensor name, dtype, shape and (site, position) header must agree with the manifest
and with ``n_rows`` / ``n_tokens`` / ``hidden_size``; ``rows.json`` must have one entry per row.
Content hashes (sha256 of every data file and of ``rows.json``) are checked on open by default
for stores up to :data:`VERIFY_ON_OPEN_BYTES` (256 MiB, about a quarter of a second); above that
they are opt-in (``ActivationStore.open(path, verify=True)``, ``reprlab store info --verify``).
The limit can be changed with the environment variable ``REPRLAB_VERIFY_MAX_BYTES``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprlab.errors import SiteError, StoreError
from reprlab.io import disk_errors, read_json, sha256_file

MANIFEST = "manifest.json"
ROWS = "rows.json"
FORMAT_VERSION = 1
#: stores up to this many bytes of data have every content hash checked on open
VERIFY_ON_OPEN_BYTES = 256 * 1024 * 1024

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
    """Create a safetensors file of the given shape and return a writable map of its data.

    The space is allocated for real (not a sparse file), so a full disk is one
    :class:`StoreError` here rather than a SIGBUS when the map is written. For large files
    written once, :class:`TensorFileWriter` keeps memory flat.
    """
    head = _header(dtype, shape, metadata or {})
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.tensor([], dtype=dtype).element_size()
    with disk_errors(Path(path).parent, len(head) + nbytes), open(path, "wb") as fh:
        fh.write(head)
        fh.flush()
        allocate(fh.fileno(), len(head) + nbytes)
    if nbytes == 0:
        return np.zeros(shape, dtype=_NP_VIEW[_ST_DTYPES[dtype]])
    return np.memmap(path, dtype=_NP_VIEW[_ST_DTYPES[dtype]], mode="r+", offset=len(head),
                     shape=shape)


class TensorFileWriter:
    """A single-tensor safetensors file, allocated on disk for real (not sparse, so a full disk
    shows at creation, not as SIGBUS later), filled row by row with ``pwrite``.

    No memory map is kept: written pages stay in the page cache, outside the process's RSS, so
    filling a large store does not grow the writer's memory.
    """

    def __init__(self, path: Path, dtype: torch.dtype, shape: tuple[int, ...],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        head = _header(dtype, shape, metadata or {})
        self.offset = len(head)
        self.shape = tuple(shape)
        self.np_dtype = np.dtype(_NP_VIEW[_ST_DTYPES[dtype]])
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.np_dtype.itemsize
        self.nbytes = self.row_bytes * int(shape[0])
        with disk_errors(self.path.parent, self.offset + self.nbytes):
            with open(self.path, "wb") as fh:
                fh.write(head)
                fh.flush()
                allocate(fh.fileno(), self.offset + self.nbytes)

    def write_rows(self, dest: np.ndarray, values: np.ndarray) -> None:
        """Write ``values[i]`` to row ``dest[i]``; consecutive rows go out in one call."""
        dest = np.asarray(dest, dtype=np.int64).reshape(-1)
        if dest.size == 0:
            return
        values = np.ascontiguousarray(values).view(self.np_dtype)
        order = np.argsort(dest, kind="stable")
        d = dest[order]
        if d[0] < 0 or d[-1] >= self.shape[0]:
            raise StoreError(f"row {int(d[-1])} is outside {self.path} ({self.shape[0]} rows)")
        breaks = np.flatnonzero(np.diff(d) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [d.size]])
        with disk_errors(self.path.parent, self.nbytes), open(self.path, "r+b") as fh:
            fd = fh.fileno()
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                block = values[order[a:b]].tobytes()
                pos = self.offset + int(d[a]) * self.row_bytes
                while block:
                    n = os.pwrite(fd, block, pos)
                    block, pos = block[n:], pos + n

    def close(self) -> None:
        """Flush to disk and drop the file's pages from the page cache."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def allocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for real (``posix_fallocate``; zeros where it is unsupported)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    have = os.fstat(fd).st_size
    zeros = b"\0" * (1 << 20)
    while have < size:
        n = os.pwrite(fd, zeros[: min(len(zeros), size - have)], have)
        have += n


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (bf16 viewed as uint16) for writing into a map."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def read_tensor_header(path: Path) -> tuple[int, dict]:
    """``(header length, header)`` of a single-tensor file; refuses anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen > min(size - 8, 1 << 20):
                raise ValueError(f"header length {hlen} does not fit the file")
            head = json.loads(fh.read(hlen))
        names = [k for k in head if k != "__metadata__"]
        if names != ["data"]:
            raise ValueError(f"tensors {names}, expected one named 'data'")
        info = head["data"]
        start, end = (int(v) for v in info["data_offsets"])
        shape = [int(v) for v in info["shape"]]
        if info["dtype"] not in _NP_VIEW:
            raise ValueError(f"dtype {info['dtype']!r}")
        item = np.dtype(_NP_VIEW[info["dtype"]]).itemsize
        if start != 0 or end != int(np.prod(shape, dtype=np.int64)) * item:
            raise ValueError("data offsets do not match the shape")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise StoreError(f"{path} is not a readable activation file ({exc}); "
                         "delete the store and capture again") from None
    if size != 8 + hlen + end:
        raise StoreError(f"{path} is truncated or corrupt ({size} bytes, expected "
                         f"{8 + hlen + end}); delete the store and capture again")
    return hlen, head


def map_tensor_file(path: Path) -> torch.Tensor:
    """Memory-map the single tensor of a file made by :func:`create_tensor_file`."""
    hlen, head = read_tensor_header(path)
    info = head["data"]
    start, end = info["data_offsets"]
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
        self.verified = False
        self.stats: dict[str, int] = {}

    @classmethod
    def open(cls, path: str | Path, expect_model: dict | None = None,
             verify: bool | None = None) -> ActivationStore:
        """Open a finished store; refuses incomplete, corrupt, inconsistent or mismatching
        stores. ``verify``: check content hashes (``None``: when the store's data is at most
        :func:`verify_limit` bytes)."""
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
        if not isinstance(manifest, dict) or manifest.get("kind") != "activation_store":
            kind = manifest.get("kind") if isinstance(manifest, dict) else None
            raise StoreError(f"{p} is not an activation store (manifest kind {kind!r})")
        store = cls(p, manifest, rows)
        try:
            store._check_consistent()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{p}/manifest.json is malformed ({type(exc).__name__}: {exc}); "
                             "delete the store and capture again") from None
        if verify is None:
            verify = store.size_bytes <= verify_limit()
        if verify:
            store.verify()
        if expect_model is not None:
            store.check_model(expect_model)
        return store

    def file_path(self, rel: str) -> Path:
        """``rel`` inside the store; refuses absolute paths and paths that leave it."""
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or "\\" in rel:
            raise StoreError(f"{self.path}/manifest.json names the file {rel!r}, which is not a "
                             "path inside the store; the manifest is corrupt or was edited")
        root = self.path.resolve()
        full = (self.path / rel).resolve()
        if full == root or root not in full.parents:
            raise StoreError(f"{self.path}/manifest.json names the file {rel!r}, which lies "
                             "outside the store; the manifest is corrupt or was edited")
        return full

    @property
    def size_bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.manifest["files"].values())

    def _check_consistent(self) -> None:
        """Every file against the manifest, the manifest against itself and rows.json."""
        m, p = self.manifest, self.path
        n, hidden = int(m["n_rows"]), int(m["hidden_size"])
        n_tokens = m.get("n_tokens")
        bad = f"; the store at {p} is corrupt or was edited: delete it and capture again"
        if n < 0 or hidden < 1:
            raise StoreError(f"manifest says {n} rows of width {hidden}{bad}")
        r = self._rows
        for col in ("ids", "lengths"):
            if not isinstance(r.get(col), list) or len(r[col]) != n:
                have = len(r[col]) if isinstance(r.get(col), list) else "no"
                raise StoreError(f"rows.json has {have} {col} for the manifest's {n} rows{bad}")
        for col in ("labels", "groups", "texts"):
            if r.get(col) is not None and len(r[col]) != n:
                raise StoreError(f"rows.json has {len(r[col])} {col} for {n} rows{bad}")
        if r.get("labels") is not None:
            k = len(r["classes"]) if r.get("classes") else None
            if any(not isinstance(v, int) or v < 0 or (k is not None and v >= k)
                   for v in r["labels"]):
                raise StoreError(f"rows.json has labels outside the classes {r.get('classes')}"
                                 f"{bad}")
        if n_tokens is not None and int(n_tokens) != sum(int(v) for v in r["lengths"]):
            raise StoreError(f"manifest says {n_tokens} tokens but the rows hold "
                             f"{sum(r['lengths'])}{bad}")
        want_dtype = _ST_DTYPES[{"float32": torch.float32, "float16": torch.float16,
                                 "bfloat16": torch.bfloat16}[m["dtype"]]]
        sites, positions = set(m["sites"]), set(m["positions"])
        expected_keys = {key(s, q) for s in sites for q in positions}
        if "all" in positions:
            expected_keys.add("tokens")
        if set(m["files"]) != expected_keys:
            missing = sorted(expected_keys - set(m["files"]))[:3]
            extra = sorted(set(m["files"]) - expected_keys)[:3]
            raise StoreError(f"manifest files do not match its sites x positions (missing "
                             f"{missing}, unexpected {extra}){bad}")
        seen: dict[Path, str] = {}
        for k, entry in m["files"].items():
            f = self.file_path(entry["file"])
            if f in seen:
                raise StoreError(f"manifest names {entry['file']} for both {seen[f]} and {k}"
                                 f"{bad}")
            seen[f] = k
            if not f.is_file():
                raise StoreError(f"{p} is missing {entry['file']}; capture again")
            if f.stat().st_size != entry["bytes"]:
                raise StoreError(f"{f} is truncated or corrupt ({f.stat().st_size} bytes, "
                                 f"expected {entry['bytes']}); delete the store and capture "
                                 "again")
            _, head = read_tensor_header(f)
            info, meta = head["data"], head.get("__metadata__") or {}
            if k == "tokens":
                shape, dtype, what = [int(n_tokens or 0), 2], "I64", {}
            else:
                site, position = k.rsplit("|", 1)
                rows_of = int(n_tokens or 0) if position == "all" else n
                shape, dtype = [rows_of, hidden], want_dtype
                what = {"site": site, "position": position}
            got_what = {x: meta.get(x) for x in what}
            if got_what != what:
                raise StoreError(f"{entry['file']} holds {got_what} but the manifest lists it as "
                                 f"{what}{bad}")
            if info["dtype"] != dtype or list(info["shape"]) != shape:
                raise StoreError(f"{entry['file']} ({k}) holds {info['dtype']} {info['shape']} "
                                 f"but the manifest implies {dtype} {shape}{bad}")
            for field_name, value in (("shape", shape), ("dtype", dtype)):
                if field_name in entry and entry[field_name] != value:
                    raise StoreError(f"manifest entry for {k} says {field_name} "
                                     f"{entry[field_name]} but the file holds {value}{bad}")

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
            self._cache[k] = map_tensor_file(self.file_path(self.manifest["files"][k]["file"]))
        return self._cache[k]

    def stack(self, sites: list[str], position: str) -> torch.Tensor:
        """``[len(sites), n_rows, d]`` float32 tensor of several sites (one copy)."""
        return torch.stack([self[s, position].float() for s in sites])

    @property
    def token_index(self) -> torch.Tensor:
        """(row, token) ids of the flattened ``all`` position, ``[n_tokens, 2]``."""
        if "tokens" not in self.manifest["files"]:
            raise SiteError(f"the store at {self.path} was captured without position 'all'")
        return map_tensor_file(self.file_path(self.manifest["files"]["tokens"]["file"]))

    def verify(self) -> None:
        """Check every data file (and rows.json) against the sha256 in the manifest."""
        for entry in self.manifest["files"].values():
            if sha256_file(self.file_path(entry["file"])) != entry["sha256"]:
                raise StoreError(f"{self.path / entry['file']} does not match its checksum; "
                                 "the store is corrupt or was edited: capture again")
        want = self.manifest.get("rows_sha256")
        if want is not None and sha256_file(self.path / ROWS) != want:
            raise StoreError(f"{self.path / ROWS} does not match its checksum; the store is "
                             "corrupt or was edited: capture again")
        self.verified = True

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


def verify_limit() -> int:
    """Bytes up to which :meth:`ActivationStore.open` checks content hashes by default."""
    raw = os.environ.get("REPRLAB_VERIFY_MAX_BYTES", "")
    try:
        return int(raw) if raw.strip() else VERIFY_ON_OPEN_BYTES
    except ValueError:
        raise StoreError(f"REPRLAB_VERIFY_MAX_BYTES={raw!r} is not a byte count; unset it or "
                         "give an integer") from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)

