"""Intermediate metrics from a workflow's own per-step log (e.g. ``train_log.jsonl`` of
preference training), for workflows that do not call :func:`reprlab.sweeps.progress.report`.

A thread tails the log while the trial runs and feeds each new row to the pruner; when the
pruner stops the trial it interrupts the trial's (main) thread, which the workflow sees as
Ctrl-C, so its own clean-up runs; the sweep then records the trial as pruned.
"""

from __future__ import annotations

import _thread
import json
import threading
from collections.abc import Callable
from pathlib import Path

from reprlab.sweeps.progress import TrialPruned

#: per-step logs that workflows write into their run directory (besides metrics.jsonl, which
#: :func:`~reprlab.sweeps.progress.report` already feeds in-process)
STEP_LOGS = ("train_log.jsonl",)


class LogWatcher:
    def __init__(self, run_dir: Path, sink: Callable[[int, dict[str, float]], None],
                 interval: float = 0.25):
        self.run_dir, self.sink, self.interval = run_dir, sink, interval
        self.offsets: dict[str, int] = {}
        self.pruned: TrialPruned | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LogWatcher:
        if threading.current_thread() is threading.main_thread():  # interrupt_main needs it
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="reprlab-sweep-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except TrialPruned as exc:
                self.pruned = exc
                self._stop.set()
                _thread.interrupt_main()
                return

    def poll(self) -> None:
        """Feed the rows appended since the last poll (whole lines only)."""
        for name in STEP_LOGS:
            path = self.run_dir / name
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(self.offsets.get(name, 0))
                data = fh.read()
            end = data.rfind(b"\n") + 1
            self.offsets[name] = self.offsets.get(name, 0) + end
            for line in data[:end].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
                    continue
                metrics = {k: float(v) for k, v in row.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
                self.sink(int(row["step"]), metrics)


__all__ = ["STEP_LOGS", "LogWatcher"]
