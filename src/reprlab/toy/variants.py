"""The whole toy build and its model names: base and SFT (:mod:`reprlab.toy.build`) plus the
organism fine-tuned on them (:mod:`reprlab.toy.organism`).

This module sits above both, so that the base build never imports the organism built on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reprlab.errors import ModelError
from reprlab.toy.build import MODEL_ALIASES, ToyPaths, build_base, ensure_base, toy_dir
from reprlab.toy.organism import build_syco, check_syco, ensure_syco

logger = logging.getLogger(__name__)


def build(preset: str = "default", *, home: str | Path | None = None, force: bool = False,
          progress: bool = True, seed: int = 0) -> ToyPaths:
    """Train the toy base and SFT models of ``preset`` and fine-tune the organism on them,
    resuming a killed build; a valid cache without the organism is extended with it."""
    paths = build_base(preset, home=home, force=force, progress=progress, seed=seed)
    build_syco(paths.root, progress=progress, force=force)
    return paths


def ensure_built(preset: str = "default", *, home: str | Path | None = None,
                 progress: bool = True) -> ToyPaths:
    """The cached whole build of ``preset`` (base, SFT, organism); what is missing or bad is
    built now, saying so."""
    paths = ensure_base(preset, home=home, progress=progress)
    if check_syco(toy_dir(preset, home)) is not None:
        ensure_syco(preset, home=home, progress=progress)
    return paths


def resolve_alias(name: str, progress: bool = True) -> Path | None:
    """``"toy"`` / ``"toy-sft"`` / ``"toy-syco"`` / ``"toy-mini"`` ... -> the model directory
    (built, or the organism fine-tuned, if needed)."""
    key = name.lower()
    if key not in MODEL_ALIASES:
        return None
    preset, which = MODEL_ALIASES[key]
    if which == "syco":
        return ensure_syco(preset, progress=progress)
    paths = ensure_base(preset, progress=progress)
    path = getattr(paths, which)
    if not path.exists():  # pragma: no cover - check_cache guards this
        raise ModelError(f"the toy build in {paths.root} lacks {which}/; run `reprlab toy "
                         "build --force`")
    return path
