"""One writer per output directory: an advisory lock file that names its holder.

``with dir_lock(out):`` takes ``out/.lock`` (``flock``, released by the kernel when the process
dies, so a killed run never leaves a stale lock). A second writer waits up to ``wait`` seconds
and then stops with one line naming the holder (pid, host, start time, command).
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


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    cmd = str(info.get("command", ""))[:80]
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
            + (f" ({cmd})" if cmd else ""))


@contextlib.contextmanager
def dir_lock(directory: str | Path, wait: float = 0.0, what: str = "this directory"
             ) -> Iterator[Path]:
    """Hold the lock of ``directory`` for the body; :class:`StoreError` when another process
    keeps it for longer than ``wait`` seconds."""
    import fcntl

    from reprlab.cliutil import command_line

    d = Path(directory)
    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(f"{d} is in use by {_holder(path)}, which is writing "
                                     f"{what}; wait for it to finish or choose another --out"
                                     ) from None
                time.sleep(0.2)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
