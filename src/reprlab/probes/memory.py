"""An in-memory store with the read API of :class:`reprlab.store.ActivationStore`.

Lets the sweep run on tensors you already hold (synthetic data, activations from elsewhere):
``TensorStore({("layers.0", "mean"): X0, ...}, labels=y)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from reprlab.errors import DataError, SiteError


class TensorStore:
    """Activations ``{(site, position): [n_rows, d]}`` plus labels / classes / groups / ids."""

    def __init__(self, tensors: Mapping[tuple[str, str], torch.Tensor],
                 labels: Sequence[int] | torch.Tensor | None = None,
                 classes: Sequence[str] | None = None, groups: Sequence[str] | None = None,
                 ids: Sequence[str] | None = None, texts: Sequence[str] | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        if not tensors:
            raise DataError("TensorStore needs at least one (site, position) tensor")
        self._t = {(str(s), str(p)): torch.as_tensor(v) for (s, p), v in tensors.items()}
        shapes = {tuple(v.shape) for v in self._t.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise DataError(f"TensorStore tensors must all be [n_rows, d] of one shape, got {shapes}")
        self.n_rows, self.hidden_size = next(iter(shapes))
        self.sites = list(dict.fromkeys(s for s, _ in self._t))
        self.positions = list(dict.fromkeys(p for _, p in self._t))
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        if self.labels is not None and len(self.labels) != self.n_rows:
            raise DataError(f"{len(self.labels)} labels for {self.n_rows} rows")
        if classes is None and self.labels is not None:
            classes = [str(c) for c in range(int(self.labels.max()) + 1)]
        self.classes = None if classes is None else [str(c) for c in classes]
        self.groups = None if groups is None else [str(g) for g in groups]
        self.ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(self.n_rows)]
        self.texts = list(texts) if texts is not None else None
        self.manifest = dict(manifest or {})

    def __getitem__(self, key: tuple[str, str]) -> torch.Tensor:
        site, pos = key
        if (site, pos) not in self._t:
            raise SiteError(f"({site!r}, {pos!r}) is not in this store; sites: "
                            f"{', '.join(self.sites)}; positions: {', '.join(self.positions)}")
        return self._t[(site, pos)]

    def layer_of(self, site: str) -> int | None:
        m = re.fullmatch(r"layers\.(\d+)", site)
        if m:
            return int(m.group(1))
        return -1 if site == "embed" else None
