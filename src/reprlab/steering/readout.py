"""Linear readouts (probe scores) and loading probe directions from runs or files.

A :class:`Readout` scores pooled hidden states at one site: ``score = h.w + b`` (a logit for
logistic probes). Readouts come from probe objects (anything exposing a weight/direction, an
optional bias, a site and a position), from a probe run directory written by
``reprlab probe``, or from a plain safetensors file holding a ``direction`` (or ``weight``)
tensor per site, e.g. ``{"layers.3": [d]}`` or ``{"layers.3.direction": [d],
"layers.3.bias": [1]}``, with an optional JSON sidecar ``{"position": "mean"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import SiteError, StoreError

_WEIGHT_KEYS = ("direction", "weight", "coef", "w")
_BIAS_KEYS = ("bias", "intercept", "b")


@dataclass(frozen=True)
class Readout:
    """``score(h [n, d]) = h @ weight + bias`` -> ``[n]`` at ``site``, pooled at ``position``."""

    site: str
    weight: torch.Tensor
    bias: float = 0.0
    position: str = "last"
    scale: float | None = None

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=pooled.device, dtype=torch.float64)
        return pooled.double() @ w + self.bias

    @property
    def unit(self) -> torch.Tensor:
        return (self.weight.double() / self.weight.double().norm()).float()


def _tensor(obj: Any) -> torch.Tensor | None:
    if obj is None:
        return None
    t = torch.as_tensor(obj).detach().float()
    if t.ndim == 2 and 1 in t.shape:
        t = t.reshape(-1)
    elif t.ndim == 2 and t.shape[0] == 2:  # two-logit binary probe: logit(1) - logit(0)
        t = t[1] - t[0]
    return t if t.ndim == 1 else None


def _bias(obj: Any) -> float:
    b = torch.as_tensor(obj).detach().double().reshape(-1)
    if b.numel() == 0:
        return 0.0
    return float(b[1] - b[0]) if b.numel() == 2 else float(b[0])


def readout_from_probe(probe: Any, site: str | None = None,
                       position: str | None = None) -> Readout:
    """A :class:`Readout` from a probe-like object (duck-typed) or a Readout."""
    if isinstance(probe, Readout):
        return probe
    if callable(getattr(probe, "linear_readout", None)):  # reprlab.probes.Probe
        weight, bias = probe.linear_readout()
        meta = getattr(probe, "meta", {}) or {}
        return Readout(str(site or meta.get("site")), weight.detach().float(), float(bias),
                       str(position or meta.get("position") or "last"))
    weight = None
    for key in _WEIGHT_KEYS + ("direction_",):
        cand = getattr(probe, key, None)
        if callable(cand) and not isinstance(cand, torch.Tensor):
            continue
        weight = _tensor(cand)
        if weight is not None:
            break
    if weight is None:
        raise StoreError(f"cannot find a direction in a {type(probe).__name__}; it needs a "
                         "direction or weight tensor")
    bias = 0.0
    for key in _BIAS_KEYS:
        b = getattr(probe, key, None)
        if b is not None and not callable(b):
            bias = _bias(b)
            break
    site = site or getattr(probe, "site", None)
    if not site:
        raise StoreError("the probe does not say which site it reads; pass site=")
    pos = position or getattr(probe, "position", None) or "last"
    scale = getattr(probe, "scale", None)
    return Readout(str(site), weight, bias, str(pos), float(scale) if scale else None)


def _from_tensor_dict(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                      ) -> dict[str, Readout]:
    position = str(meta.get("position", "last"))
    per_site_pos = meta.get("positions", {}) if isinstance(meta.get("positions"), Mapping) else {}
    out: dict[str, Readout] = {}
    for key, t in tensors.items():
        site, _, leaf = key.rpartition(".")
        if leaf in _WEIGHT_KEYS and site:
            pass
        elif leaf in _BIAS_KEYS or key.endswith(".scale"):
            continue
        else:
            site = key
        w = _tensor(t)
        if w is None:
            continue
        bias_t = next((tensors[f"{site}.{b}"] for b in _BIAS_KEYS if f"{site}.{b}" in tensors),
                      None)
        bias = _bias(bias_t) if bias_t is not None else 0.0
        out[site] = Readout(site, w, bias, str(per_site_pos.get(site, position)))
    return out


def load_readouts(path: str | Path) -> dict[str, Readout]:
    """Readouts per site from a probe run directory or a safetensors file.

    A probe run written by ``reprlab.probes`` is read through its own loader when that module
    provides one; otherwise every ``*.safetensors`` file is scanned for direction tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p} does not exist; pass a probe run directory or a safetensors file "
                         "with a direction tensor per site")
    loaded = _via_probe_module(p)
    if loaded:
        return loaded
    files = [p] if p.is_file() else sorted(p.rglob("*.safetensors"))
    out: dict[str, Readout] = {}
    for f in files:
        if f.name.startswith("steering_vector"):
            continue
        meta: dict[str, Any] = {}
        sidecar = f.with_suffix(".json")
        if sidecar.exists():
            try:
                meta = json.loads(sidecar.read_text())
            except json.JSONDecodeError:
                meta = {}
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                meta = {**(fh.metadata() or {}), **meta}
            tensors = load_file(str(f))
        except (OSError, SafetensorError) as exc:
            raise StoreError(f"{f} is not a readable safetensors file ({exc})") from None
        out.update(_from_tensor_dict(tensors, meta))
    if not out:
        raise StoreError(f"no probe directions found in {p}; expected a probe run or a "
                         "safetensors file with a direction tensor per site")
    return out


def _via_probe_module(p: Path) -> dict[str, Readout] | None:
    """Readouts of a run directory written by ``reprlab probe`` (None for anything else)."""
    if not ((p / "results.json").is_file() and (p / "probes").is_dir()):
        return None
    from reprlab.probes import load_probes

    return {site: readout_from_probe(probe, site=site)
            for site, probe in load_probes(p).items()}


def pick(readouts: Mapping[str, Readout], site: str) -> Readout:
    if site not in readouts:
        raise SiteError(f"no probe for site {site!r}; the probes cover "
                        f"{', '.join(list(readouts)[:8])}")
    return readouts[site]
