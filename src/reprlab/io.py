"""Atomic file writes and JSON helpers shared by stores and run directories."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reprlab.errors import StoreError


def _jsonable(obj: Any) -> Any:
    # torch / numpy values exist only once those libraries are imported: this module does not
    # import them, so the CLI that uses it starts fast
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch is not None and isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if np is not None and isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) or (np is not None and isinstance(obj, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if np is not None and isinstance(obj, np.integer):
        return int(obj)
    if np is not None and isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text; tensors/arrays become lists, NaN/inf become null."""
    return json.dumps(_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents); one clear error when it cannot be written."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"cannot write to {p} ({exc.strerror or exc}); choose another --out") from None
    return p


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@contextlib.contextmanager
def disk_errors(directory: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk or an unwritable place into one :class:`StoreError` line naming the
    directory (and the bytes needed, when known)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            need = f"; it needs {_human_bytes(needed)}" if needed else ""
            raise StoreError(f"no space left in {directory}{need}: free some space or choose "
                             "another --out") from None
        if exc.errno in _NOT_WRITABLE:
            raise StoreError(f"cannot write to {directory} ({exc.strerror}); choose another "
                             "place") from None
        raise


def check_free_space(directory: str | Path, needed: int) -> None:
    """Refuse to start writing ``needed`` bytes into ``directory`` when they do not fit."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed:
        raise StoreError(f"not enough space in {directory}: it needs {_human_bytes(needed)}, "
                         f"{_human_bytes(free)} are free; free some space or choose another "
                         "--out")


def current_umask() -> int:
    """This process's umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode for a file reprlab writes: ``0o666`` less the umask, what ``open()`` gives a new
    file (a group-readable report on a shared server when the umask says so)."""
    return 0o666 & ~current_umask()


def apply_umask(path: str | Path) -> None:
    """Give ``path`` (a file, or every file under a directory) the mode the umask allows:
    for files that libraries create 0600 (safetensors ``save_file``, ``save_pretrained``)."""
    p = Path(path)
    mode = file_mode()
    for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
        with contextlib.suppress(OSError):
            os.chmod(f, mode)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; best effort."""
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; respect the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_lines(path: str | Path, what: str = "text file") -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file; one clear line when it is missing, a
    directory, unreadable or not text."""
    from reprlab.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist" + (" (it is a directory)" if p.is_dir()
                                                         else "") + "; check the path")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {p} ({exc.strerror or exc})") from None
    if b"\x00" in raw[:1 << 16]:
        raise DataError(f"{what} {p} is a binary file, not text: give a UTF-8 text file with "
                        "one text per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                        "with one text per line") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{what} {p} has no non-empty line")
    return lines


def require_finite(value: float, name: str) -> float:
    """``value`` as a float; :class:`ConfigError` when it is NaN or infinite."""
    from reprlab.errors import ConfigError

    f = float(value)
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return f


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: how a path under the reprlab cache is written in run directories
HOME_VAR = "$REPRLAB_HOME"


def reprlab_home() -> Path:
    """The cache root: ``$REPRLAB_HOME``, ``$XDG_CACHE_HOME/reprlab`` or ``~/.cache/reprlab``."""
    if os.environ.get("REPRLAB_HOME"):
        return Path(os.environ["REPRLAB_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "reprlab"


def portable(obj: Any) -> Any:
    """``obj`` with every string that is an absolute path under the reprlab cache written as
    ``$REPRLAB_HOME/...`` (read back by :func:`local_path`), so a run directory does not carry
    the sender's cache location."""
    home = str(reprlab_home().resolve())

    def one(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one(x) for x in v]
        if isinstance(v, str) and v.startswith("/") and "\n" not in v:
            try:
                resolved = str(Path(v).resolve())
            except (OSError, RuntimeError):
                return v
            if resolved == home or resolved.startswith(home + os.sep):
                return HOME_VAR + resolved[len(home):]
        return v

    return one(obj)


def local_path(text: str) -> str:
    """A path written by :func:`portable` as a path on this machine (others unchanged)."""
    if isinstance(text, str) and (text == HOME_VAR or text.startswith(HOME_VAR + "/")):
        return str(reprlab_home()) + text[len(HOME_VAR):]
    return text
