"""The frozen steering-vector artifact: one unit direction per site plus its raw scale.

A :class:`SteeringVector` is immutable and saved as ``steering_vector.safetensors`` (tensors
``<site>`` = unit direction ``[d]`` and ``<site>.scale`` = scalar) with a JSON sidecar
``steering_vector.json`` (model identity, method, position, per-site diagnostics). Calling it
projects hidden states onto a site's direction; :meth:`SteeringVector.steer` returns a context
manager that edits the model and restores it on exit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reprlab.errors import ConfigError, ModelError, SiteError, StoreError
from reprlab.io import atomic_write_bytes, ensure_writable_dir, read_json, write_json
from reprlab.steering import operators

if TYPE_CHECKING:
    from reprlab.models import LoadedModel

logger = logging.getLogger(__name__)

TENSORS = "steering_vector.safetensors"
SIDECAR = "steering_vector.json"
FORMAT = "reprlab.steering_vector/1"


@dataclass(frozen=True)
class SteeringVector:
    """Per-site unit directions with their raw scales and where they came from.

    ``directions[site]`` is a unit vector ``[d]``; ``scales[site]`` is the norm of the raw
    mean difference at that site (so ``scales[s] * directions[s]`` is the CAA vector).
    ``model`` is the identity dict of the model it was fitted on (``LoadedModel.identity()``),
    possibly partial for imported vectors.
    """

    directions: Mapping[str, torch.Tensor]
    scales: Mapping[str, float]
    model: Mapping[str, Any] = field(default_factory=dict)
    method: str = ""
    position: str = "last"
    source: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ConfigError("a steering vector needs at least one site")
        dirs: dict[str, torch.Tensor] = {}
        sizes = set()
        for site, v in self.directions.items():
            t = torch.as_tensor(v).detach()
            if t.ndim != 1:
                raise ConfigError(f"direction for {site} must be 1-D, got shape {tuple(t.shape)}")
            norm = t.double().norm()
            if not torch.isfinite(norm) or norm == 0:
                raise ConfigError(f"direction for {site} is zero or not finite")
            dirs[site] = (t.double() / norm).to(t.dtype if t.is_floating_point() else torch.float32)
            sizes.add(t.shape[0])
        if len(sizes) != 1:
            raise ConfigError(f"directions have different sizes {sorted(sizes)}; one vector "
                              "holds directions of one model")
        scales = {s: float(self.scales.get(s, 1.0)) for s in dirs}
        object.__setattr__(self, "directions", dirs)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "info", dict(self.info))

    # -- access ------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def direction(self, site: str) -> torch.Tensor:
        """Unit direction at ``site`` -> ``[d]``; one clear line when the vector lacks it."""
        try:
            return self.directions[site]
        except KeyError:
            raise SiteError(f"the steering vector has no direction for site {site!r}; it has "
                            f"{_short(self.sites)}") from None

    def raw(self, site: str) -> torch.Tensor:
        """``scale * direction`` (the raw mean-difference length) at ``site`` -> ``[d]``."""
        return self.direction(site) * self.scales[site]

    def __call__(self, hidden: torch.Tensor, site: str) -> torch.Tensor:
        """Projection of ``hidden [..., d]`` onto the unit direction of ``site`` -> ``[...]``."""
        u = self.direction(site).to(device=hidden.device, dtype=hidden.dtype)
        return hidden @ u

    def __iter__(self) -> Iterator[str]:
        return iter(self.directions)

    def __len__(self) -> int:
        return len(self.directions)

    def to(self, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None) -> SteeringVector:
        """A copy with directions on ``device`` / in ``dtype``."""
        dirs = {s: v.to(device=device, dtype=dtype) for s, v in self.directions.items()}
        return replace(self, directions=dirs)

    def select(self, sites: list[str] | str) -> SteeringVector:
        """A vector restricted to ``sites`` (each must exist)."""
        names = [sites] if isinstance(sites, str) else list(sites)
        return replace(self, directions={s: self.direction(s) for s in names},
                       scales={s: self.scales[s] for s in names})

    # -- compatibility -----------------------------------------------------------------
    def check_model(self, lm: LoadedModel, strict: bool = True) -> None:
        """Refuse a model of another hidden size; with ``strict``, also another model.

        Raises :class:`ModelError` with one line naming the mismatch.
        """
        d = lm.arch.hidden_size
        if self.hidden_size != d:
            raise ModelError(f"the steering vector has hidden size {self.hidden_size} but model "
                             f"{lm.name} has {d}; fit or load a vector for this model")
        if not self.model:
            return
        ident = lm.identity()
        for key in ("config_hash", "weights_fingerprint"):
            mine, theirs = self.model.get(key), ident.get(key)
            if mine and theirs and mine != theirs:
                msg = (f"the steering vector was fitted on {self.model.get('name', '?')} "
                       f"({key} {mine}) but the model is {lm.name} ({key} {theirs})")
                if strict:
                    raise ModelError(msg + "; pass allow_other_model=True "
                                     "(--allow-other-model) to use it anyway")
                logger.warning(msg)
                return

    # -- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "sites": self.sites, "scales": self.scales,
                "hidden_size": self.hidden_size, "model": self.model, "method": self.method,
                "position": self.position, "source": self.source, "info": self.info}

    def save(self, path: str | Path) -> Path:
        """Write ``path/steering_vector.safetensors`` and ``path/steering_vector.json``."""
        from safetensors.torch import save

        out = ensure_writable_dir(path)
        tensors = {s: v.detach().float().cpu().contiguous() for s, v in self.directions.items()}
        tensors.update({f"{s}.scale": torch.tensor([self.scales[s]], dtype=torch.float32)
                        for s in self.directions})
        atomic_write_bytes(out / TENSORS, save(tensors, metadata={"format": FORMAT}))
        write_json(out / SIDECAR, self.metadata())
        return out

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SteeringVector:
        """Load a vector saved by :meth:`save` (directory or its .safetensors/.json file)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        p = Path(path)
        if p.is_file():
            p = p.parent
        tfile, jfile = p / TENSORS, p / SIDECAR
        if not tfile.exists() or not jfile.exists():
            raise StoreError(f"{path} holds no steering vector ({TENSORS} + {SIDECAR}); "
                             "create one with `reprlab steer vector`")
        try:
            meta = read_json(jfile)
            tensors = load_file(str(tfile), device=str(device))
        except (OSError, json.JSONDecodeError, SafetensorError) as exc:
            raise StoreError(f"steering vector at {p} is unreadable ({exc}); "
                             "fit it again") from None
        sites = meta.get("sites") or [k for k in tensors if not k.endswith(".scale")]
        missing = [s for s in sites if s not in tensors]
        if missing:
            raise StoreError(f"steering vector at {p} lacks tensors for {missing}; fit it again")
        scales = {s: float(tensors[f"{s}.scale"].item()) if f"{s}.scale" in tensors
                  else float(meta.get("scales", {}).get(s, 1.0)) for s in sites}
        return cls({s: tensors[s] for s in sites}, scales, model=meta.get("model") or {},
                   method=meta.get("method", ""), position=meta.get("position", "last"),
                   source=meta.get("source", ""), info=meta.get("info") or {})

    # -- steering ----------------------------------------------------------------------
    def steer(self, lm: LoadedModel, coeff: float | Mapping[str, float] = 1.0,
              **kwargs: Any) -> AbstractContextManager[None]:
        """Context manager steering ``lm`` along this vector (see :func:`operators.steer`)."""
        return operators.steer(lm, self, coeff, **kwargs)


def _short(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} sites)" if len(items) > n else "")


def from_tensors(directions: Mapping[str, torch.Tensor], scales: Mapping[str, float] | None = None,
                 **kwargs: Any) -> SteeringVector:
    """Build a vector from raw per-site tensors; the scale defaults to each tensor's norm."""
    scales = dict(scales or {})
    for s, v in directions.items():
        scales.setdefault(s, float(torch.as_tensor(v).double().norm()))
    return SteeringVector(dict(directions), scales, **kwargs)
