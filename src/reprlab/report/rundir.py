"""A run directory that every workflow writes the same way.

Layout::

    out/
      results.json    every number of the run
      manifest.json   model identity, data hash, seeds, versions, command line, timing
      report.html     one self-contained page (PNGs inlined)
      *.csv, *.png, *.safetensors (+ .json sidecars)

``manifest.json`` with ``"complete": true`` marks a finished run. :meth:`RunDir.create`
removes an earlier run's mark (durably) before the new run writes anything, so a rerun killed
part-way leaves a directory that reads as unfinished (:func:`is_complete` is False, and
:meth:`RunDir.load_results` refuses it), never new files beside an old mark.
``results.json``, ``report.html`` and then ``manifest.json`` are written by
:meth:`RunDir.finish`, atomically; the new manifest lists the files of this run only.
Secrets (keys, tokens) are never written: config keys that look like secrets are dropped.

A run directory knows its workflow and settings: :meth:`RunDir.create` writes them to
``.run.json`` before anything else, and every writer checks them (:func:`check_out`) before
it touches anything. A directory that holds another workflow's run, or a finished run with
other settings, is refused with one line and left as it was; so is an unfinished run with
other settings of a workflow that resumes (training). The same settings continue (resume) or
redo the run. One process at a time writes a run directory (the lock of :mod:`reprlab.lock`,
held from ``create`` to ``finish``).
"""

from __future__ import annotations

import csv
import io
import logging
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab.io import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    fsync_dir,
    read_json,
    write_json,
)
from reprlab.report import html as html_mod

logger = logging.getLogger(__name__)

# whole names only: "api_key", "hf_token", "password" are dropped; "tokens", "max_new_tokens" kept
_SECRET = re.compile(r"^(?:.*[_-])?(?:api[_-]?key|key|token|secret|password|passwd|credentials?)$",
                     re.I)


def environment_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("reprlab", "torch", "transformers", "safetensors", "numpy", "scikit-learn",
                "pot", "nnsight", "gguf", "ruptures"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    out["cuda"] = torch.version.cuda or "none"
    return out


def _clean_config(config: Any) -> Any:
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    if isinstance(config, Mapping):
        return {k: _clean_config(v) for k, v in config.items() if not _SECRET.search(str(k))}
    if isinstance(config, (list, tuple)):
        return [_clean_config(v) for v in config]
    return config


MANIFEST = "manifest.json"
CLAIM = ".run.json"

#: config keys that do not change what a run computes
NOT_SETTINGS = frozenset({"out", "progress", "no_progress", "device", "threads", "verbose",
                          "world_size"})


def settings_of(config: Any, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What identifies a run: its config (less :data:`NOT_SETTINGS`) and, when ``inputs``
    names a model, its weights (``model_weights``)."""
    clean = _clean_config(config or {})
    out = ({k: v for k, v in clean.items() if k not in NOT_SETTINGS}
           if isinstance(clean, Mapping) else {"config": clean})
    model = (inputs or {}).get("model")
    if isinstance(model, Mapping) and (model.get("weights_fingerprint") or model.get("name")):
        out["model_weights"] = model.get("weights_fingerprint") or model.get("name")
    return json_safe(out)


def json_safe(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists, paths as strings)."""
    import json

    from reprlab.io import _jsonable

    return json.loads(json.dumps(_jsonable(obj), default=str))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["lr 0.001 -> 0.0001", ...]`` for the keys both record with other values."""
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
            if old[k] != new[k]]


def recorded_run(out: str | Path) -> dict | None:
    """``{"workflow", "settings", "complete"}`` of the run in ``out`` (``None``: none there).
    Read from ``.run.json``, else from the manifest of a run written before it existed."""
    path = Path(out)
    try:
        claim = read_json(path / CLAIM)
    except (OSError, ValueError):
        claim = None
    try:
        manifest = read_json(path / MANIFEST)
    except (OSError, ValueError):
        manifest = None
    complete = isinstance(manifest, dict) and manifest.get("complete") is True
    if isinstance(claim, dict) and claim.get("workflow"):
        return {"workflow": claim["workflow"], "settings": claim.get("settings") or {},
                "complete": complete}
    if isinstance(manifest, dict) and manifest.get("reprlab_run") and manifest.get("workflow"):
        return {"workflow": manifest["workflow"], "settings": manifest.get("settings") or {},
                "complete": complete}
    return None


def check_out(out: str | Path, workflow: str, settings: Mapping[str, Any] | None = None,
              resumable: str | None = None) -> dict | None:
    """Refuse (:class:`StoreError`, or :class:`ConfigError` for other settings; nothing
    touched) when ``out`` holds a run that a
    ``workflow`` run with ``settings`` must not replace: another workflow's run, a finished
    run with other settings, or an unfinished one with other settings that saved its
    training state (``resumable``: the name of that file in ``out``). Only
    the settings both sides record are compared, so a check made early with part of them
    (before the model is loaded) is repeated in full by :meth:`RunDir.create`. Returns the
    recorded run (``None``: none)."""
    from reprlab.errors import ConfigError, StoreError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file, not a directory; give --out a directory")
    got = recorded_run(path)
    if got is None:
        return None
    state = "finished" if got["complete"] else "unfinished"
    if got["workflow"] != workflow:
        raise StoreError(f"{path} holds a {state} {got['workflow']} run, not a {workflow} run; "
                         "choose another --out (it is left as it is)")
    changes = _differences(got["settings"], json_safe(dict(settings or {})))
    saved = bool(resumable) and (path / str(resumable)).exists()
    if changes and (got["complete"] or saved):
        more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise ConfigError(f"{path} holds a {state} {workflow} run with different settings "
                         f"({'; '.join(changes[:3])}{more}); rerun with the same settings to "
                         f"{'redo' if got['complete'] else 'resume'} it, or choose another --out")
    return got


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` holds a finished reprlab run (its manifest says ``complete``)."""
    try:
        manifest = read_json(Path(path) / MANIFEST)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("complete") is True


def invalidate(out: str | Path) -> bool:
    """Remove the completion mark of a run in ``out`` (if any) and make the removal durable,
    before anything of a new run is written there. Returns whether there was one."""
    path = Path(out)
    mark = path / MANIFEST
    try:
        old = read_json(mark)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        old = None  # unreadable: not a finished run either way
    if isinstance(old, dict) and not old.get("reprlab_run") and old.get("kind"):
        from reprlab.errors import StoreError

        raise StoreError(f"{path} holds a {old['kind'].replace('_', ' ')}, not a run "
                         "directory; choose another --out")
    mark.unlink(missing_ok=True)
    fsync_dir(path)
    logger.info("%s held a finished run; it is replaced when this run finishes", path)
    return True



def claim(out: str | Path, workflow: str, settings: Mapping[str, Any] | None = None) -> None:
    """Record in ``out`` that it holds a ``workflow`` run with ``settings`` (after
    :func:`check_out`; before anything else of the run is written)."""
    write_json(Path(out) / CLAIM, {"workflow": workflow, "settings": json_safe(dict(settings or {}))})


class RunDir:
    """Collects a run's files and writes the report when the run finishes."""

    def __init__(self, path: Path, workflow: str, config: dict, inputs: dict, seed: int | None,
                 settings: dict | None = None):
        self.path = path
        self.settings = settings or {}
        self.workflow = workflow
        self.config = config
        self.inputs = inputs
        self.seed = seed
        self.started = time.time()
        self._blocks: list[tuple[str, str]] = []  # (kind, html)
        self.files: list[str] = []

    @classmethod
    def create(cls, out: str | Path, workflow: str, config: Any = None, inputs: dict | None = None,
               seed: int | None = None, resumable: str | None = None,
               settings: Mapping[str, Any] | None = None) -> RunDir:
        """Prepare ``out`` for a run (created if needed; writable or one clear error).

        First the checks of :func:`check_out` (``settings`` default to
        :func:`settings_of` the config and inputs; ``resumable``: the file in which the
        workflow saves the state it resumes from, so an unfinished run that saved one is
        refused too when its settings differ), then the directory's lock
        (held until :meth:`finish`), then ``.run.json``. An earlier finished run of the same
        settings stops reading as complete now (its mark is removed before this run writes
        anything); its files stay until this run replaces them.
        """
        from reprlab.lock import hold

        settings = json_safe(dict(settings) if settings is not None
                             else settings_of(config, inputs))
        check_out(out, workflow, settings, resumable)
        path = ensure_writable_dir(out)
        hold(path, f"a {workflow} run")
        check_out(path, workflow, settings, resumable)  # again, now that no one else writes
        claim(path, workflow, settings)
        invalidate(path)
        return cls(path, workflow, _clean_config(config or {}), inputs or {}, seed, settings)

    # -- files -------------------------------------------------------------------------
    def _track(self, name: str) -> Path:
        if name not in self.files:
            self.files.append(name)
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        p = self._track(name)
        write_json(p, obj)
        return p

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        p = self._track(name)
        buf = io.StringIO()
        fields: list[str] = []
        for r in rows:
            fields.extend(k for k in r if k not in fields)
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt_csv(v) for k, v in r.items()})
        atomic_write_text(p, buf.getvalue())
        return p

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> Path:
        from safetensors.torch import save

        p = self._track(name)
        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                    metadata={k: str(v) for k, v in (metadata or {}).items()})
        atomic_write_bytes(p, data)
        return p

    # -- report blocks ---------------------------------------------------------------
    def figure(self, fig: Any, name: str, caption: str = "", title: str = "") -> Path:
        """Save a matplotlib figure as PNG and add it to the report."""
        import matplotlib.pyplot as plt

        p = self._track(name)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(p, buf.getvalue())
        self._blocks.append(("figure", html_mod.figure(buf.getvalue(), title or "", caption)))
        return p

    def table(self, title: str, rows: Sequence[Mapping[str, Any]], note: str = "") -> None:
        self._blocks.append(("table", html_mod.table(title, rows, note)))

    def text(self, title: str, body: str, raw_html: bool = False) -> None:
        self._blocks.append(("text", html_mod.text(title, body, raw_html)))

    # -- finish ------------------------------------------------------------------------
    def manifest(self, extra: Mapping[str, Any] | None = None) -> dict:
        from reprlab.cliutil import command_line

        return {
            "workflow": self.workflow,
            "reprlab_run": True,
            "complete": True,
            "inputs": self.inputs,
            "config": self.config,
            "seed": self.seed,
            "command_line": command_line(),
            "versions": environment_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 3),
            "files": sorted(set(self.files) | {"results.json", "report.html"}),
            "settings": self.settings,
            **(dict(extra) if extra else {}),
        }

    def finish(self, results: Mapping[str, Any], title: str | None = None,
               summary: str = "", extra_manifest: Mapping[str, Any] | None = None) -> Path:
        """Write results.json, report.html, then manifest.json (last: marks the run complete)."""
        from reprlab.io import portable

        (self.path / MANIFEST).unlink(missing_ok=True)
        results = portable(json_safe(dict(results)))
        write_json(self.path / "results.json", results)
        manifest = portable(json_safe(self.manifest(extra_manifest)))
        page = html_mod.page(title or f"reprlab {self.workflow}", summary, self._blocks, manifest)
        atomic_write_text(self.path / "report.html", page)
        write_json(self.path / MANIFEST, manifest)
        self.close()
        logger.info("report written to %s", self.path / "report.html")
        return self.path / "report.html"

    def close(self) -> None:
        """Let other processes write this directory (done by :meth:`finish`)."""
        from reprlab.lock import release

        release(self.path)

    @staticmethod
    def load_results(path: str | Path) -> dict:
        """results.json of a finished run (one clear error when the run is not complete)."""
        from reprlab.errors import StoreError

        p = Path(path)
        if not p.is_dir():
            raise StoreError(f"{p} is not a finished reprlab run: there is no such directory; "
                             "check the path")
        if not is_complete(p):
            raise StoreError(f"{p} is not a finished reprlab run (no complete manifest.json); "
                             "run it again")
        return read_json(p / "results.json")


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"{v.item():.6g}"
    return v


__all__ = ["RunDir", "check_out", "environment_versions", "invalidate", "is_complete",
           "recorded_run", "settings_of"]
