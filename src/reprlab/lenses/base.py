"""The Lens base: a fitted, frozen artifact saved as ``<stem>.safetensors`` + ``<stem>.json``.

A lens maps a hidden state at some depth of a model to a reading a person can check: a
next-token distribution (logit, tuned lens) or a few words (talkative lens). Fitters return a
lens; a lens is immutable (its tensors do not require grad), moves with :meth:`Lens.to`, and
round-trips bit for bit through :meth:`Lens.save` / :func:`load_lens`. The JSON header names
the kind, so :func:`load_lens` rebuilds the right class from the registry :data:`LENS_KINDS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from reprlab.errors import StoreError
from reprlab.io import atomic_write_bytes, atomic_write_text, to_json

FORMAT = "reprlab.lens/1"

#: lens kind -> class (filled by ``@register``)
LENS_KINDS: dict[str, type[Lens]] = {}
#: lens kind -> module that registers it (imported by :func:`load_lens` on demand)
KIND_MODULES = {"logit": "reprlab.lenses.logit", "tuned": "reprlab.lenses.tuned.lens",
                "talk": "reprlab.lenses.talk.lens"}


def register(cls: type[Lens]) -> type[Lens]:
    LENS_KINDS[cls.kind] = cls
    return cls


def _stem(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    for ext in (".json", ".safetensors"):
        if text.endswith(ext):
            return Path(text[: -len(ext)])
    return Path(text)


class Lens:
    """Base of every lens: named tensors plus a JSON-able config.

    Subclasses set :attr:`kind`, keep their weights in ``self.tensors`` and rebuild themselves
    in :meth:`from_state`.
    """

    kind: ClassVar[str] = "lens"

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict[str, Any]):
        self.tensors = {k: v.detach().clone(memory_format=torch.contiguous_format)
                        for k, v in tensors.items()}
        self.config = dict(config)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                   **kwargs: Any) -> Lens:
        return cls(tensors, config)

    @property
    def device(self) -> torch.device:
        first = next(iter(self.tensors.values()), None)
        return first.device if first is not None else torch.device("cpu")

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Lens:
        """A copy with every tensor on ``device`` (floating tensors in ``dtype``)."""
        moved = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                 for k, v in self.tensors.items()}
        return type(self).from_state(moved, self.config)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically; returns the stem."""
        from safetensors.torch import save

        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        data = save({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()})
        atomic_write_bytes(Path(os.fspath(stem) + ".safetensors"), data)
        header = {"format": FORMAT, "kind": self.kind, "config": self.config}
        atomic_write_text(Path(os.fspath(stem) + ".json"), to_json(header) + "\n")
        return stem

    def __repr__(self) -> str:
        n = sum(v.numel() for v in self.tensors.values())
        return f"{type(self).__name__}({n} parameters, {self.config.get('model', {}).get('name')})"


def load_lens(path: str | os.PathLike, device: str | torch.device = "cpu",
              **kwargs: Any) -> Lens:
    """Read any lens written by :meth:`Lens.save` (give the stem or either file)."""
    from safetensors.torch import load_file

    stem = _stem(path)
    js, st = Path(os.fspath(stem) + ".json"), Path(os.fspath(stem) + ".safetensors")
    if not js.exists() or not st.exists():
        raise StoreError(f"no lens at {stem} (need {js.name} and {st.name}); give a run "
                         "directory's lens, e.g. runs/tuned/lens")
    try:
        header = json.loads(js.read_text())
    except ValueError as exc:
        raise StoreError(f"{js} is not readable JSON ({exc}); train the lens again") from None
    kind = header.get("kind")
    if kind in KIND_MODULES and kind not in LENS_KINDS:
        import importlib

        importlib.import_module(KIND_MODULES[kind])
    if header.get("format") != FORMAT or kind not in LENS_KINDS:
        raise StoreError(f"{js} is not a reprlab lens (format {header.get('format')!r}, kind "
                         f"{header.get('kind')!r})")
    try:
        tensors = load_file(str(st), device=str(device))
    except Exception as exc:  # safetensors' own error for a cut or garbled file
        raise StoreError(f"{st} is corrupt or truncated ({str(exc).splitlines()[0][:80]}); "
                         "train the lens again") from None
    return LENS_KINDS[header["kind"]].from_state(tensors, header["config"], **kwargs)
