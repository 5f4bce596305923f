"""One writer per output directory: an advisory lock file that names its holder.

``with dir_lock(out):`` takes ``out/.lock`` (``flock``, released by the kernel when the process
dies, so a killed run never leaves a stale lock). A second writer waits up to ``wait`` seconds
and then stops with one line naming the holder (pid, host, start time, command).

:func:`hold` takes the same lock for longer than one block of code (a run directory from
:meth:`reprlab.report.RunDir.create` until its ``finish``); :func:`release` lets it go. A
process that takes a directory it already holds (an earlier run in the same process that
stopped part-way) takes it over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from reprlab.errors import StoreError

LOCK_NAME = ".lock"

#: directories this process holds through :func:`hold` -> the open lock file
_HELD: dict[Path, int] = {}


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    cmd = str(info.get("command", ""))[:80]
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
            + (f" ({cmd})" if cmd else ""))


def _acquire(d: Path, wait: float, what: str) -> int:
    """The open, locked ``d/.lock`` (its holder recorded); :class:`StoreError` when another
    process keeps it for longer than ``wait`` seconds."""
    import fcntl

    from reprlab.cliutil import command_line

    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreError(f"{d} is in use by {_holder(path)}, which is writing "
                                 f"{what}; wait for it to finish or choose another --out"
                                 ) from None
            time.sleep(0.2)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _let_go(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def dir_lock(directory: str | Path, wait: float = 0.0, what: str = "this directory"
             ) -> Iterator[Path]:
    """Hold the lock of ``directory`` for the body; :class:`StoreError` when another process
    keeps it for longer than ``wait`` seconds."""
    d = Path(directory)
    key = d.resolve()
    if key in _HELD:  # this process already holds it (a run directory being written)
        yield d / LOCK_NAME
        return
    fd = _acquire(d, wait, what)
    try:
        yield d / LOCK_NAME
    finally:
        _let_go(fd)


def hold(directory: str | Path, what: str = "this directory", wait: float = 0.0) -> None:
    """Take the lock of ``directory`` until :func:`release` (or the end of the process)."""
    d = Path(directory)
    key = d.resolve()
    old = _HELD.pop(key, None)
    if old is not None:  # an earlier run of this process that stopped part-way
        _let_go(old)
    _HELD[key] = _acquire(d, wait, what)


def release(directory: str | Path | None = None) -> None:
    """Let go of the lock of ``directory`` (every held one when ``None``)."""
    keys = list(_HELD) if directory is None else [Path(directory).resolve()]
    for key in keys:
        fd = _HELD.pop(key, None)
        if fd is not None:
            _let_go(fd)


def held(directory: str | Path) -> bool:
    """Whether this process holds the lock of ``directory``."""
    return Path(directory).resolve() in _HELD
