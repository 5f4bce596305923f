"""Frozen probes: immutable, callable, movable, saved as safetensors + JSON.

A :class:`Probe` maps raw activations ``x [N, d]`` to class probabilities ``[N, K]``. It holds
the per-feature standardisation fitted on its training rows (``mean``, ``std``) and the
parameters of its kind (:data:`FORWARD`): ``linear`` (``weight [K', d]``, ``bias [K']``) or
``mlp`` (``w1 [d, h]``, ``b1 [h]``, ``w2 [h, K']``, ``b2 [K']``), with ``K' = 1`` (sigmoid) for
two classes and ``K`` (softmax) otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reprlab.errors import ConfigError, StoreError
from reprlab.io import file_mode
from reprlab.probes.logistic import linear_logits, probs_from_logits
from reprlab.probes.mlp import mlp_logits

FORMAT = "reprlab.probe/1"


def _linear(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return linear_logits(x[None], p["weight"][None, None], p["bias"][None, None])[0, 0]


def _mlp(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return mlp_logits(x[None], {k: v[None, None] for k, v in p.items()})[0, 0]


#: probe kind -> forward(standardised x [N, d], params) -> logits [N, K']
FORWARD: dict[str, Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]] = {
    "linear": _linear,
    "mlp": _mlp,
}


@dataclass(frozen=True)
class Probe:
    """A fitted probe. Call it on raw activations ``[N, d]`` to get probabilities ``[N, K]``."""

    family: str
    kind: str
    params: dict[str, torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # own, freshly allocated tensors (not views into the stacked sweep or a file buffer):
        # multi-threaded BLAS picks kernels by layout and alignment, and a probe should compute
        # the same bits before and after a save/load round trip
        def own(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone(memory_format=torch.contiguous_format)

        object.__setattr__(self, "params", {k: own(v) for k, v in self.params.items()})
        object.__setattr__(self, "mean", own(self.mean))
        object.__setattr__(self, "std", own(self.std))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations ``[N, d]`` (or ``[d]``) -> logits ``[N, K']``."""
        x = torch.as_tensor(x)
        if x.dim() == 1:
            x = x[None]
        xs = (x.to(self.mean) - self.mean) / self.std
        return FORWARD[self.kind](xs, self.params)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return probs_from_logits(self.logits(x))

    def predict(self, x: torch.Tensor) -> list[str]:
        """Class names of the most probable class for every row."""
        return [self.classes[i] for i in self(x).argmax(-1).tolist()]

    @property
    def direction(self) -> torch.Tensor | None:
        """Unit direction(s) in raw activation space ``[K', d]`` for linear probes, else None.

        The logit of class ``k`` grows along ``direction[k]`` (standardisation undone)."""
        if self.kind != "linear":
            return None
        w = self.params["weight"] / self.std
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    def linear_readout(self) -> tuple[torch.Tensor, float]:
        """``(weight [d], bias)`` in raw activation space such that ``x @ weight + bias`` is
        the logit of the positive class (``classes[1]``); binary linear probes only."""
        if self.kind != "linear" or self.params["weight"].shape[0] != 1:
            raise ConfigError(f"a {self.family} probe over {len(self.classes)} classes has no "
                              "single linear score; use a binary logistic or mass-mean probe")
        w = self.params["weight"][0].double()
        std, mean = self.std.double(), self.mean.double()
        weight = w / std
        bias = float(self.params["bias"][0].double() - (mean * weight).sum())
        return weight.to(self.std.dtype), bias

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Probe:
        """A copy on ``device`` / in ``dtype``."""
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)
        return Probe(self.family, self.kind, {k: mv(v) for k, v in self.params.items()},
                     mv(self.mean), mv(self.std), list(self.classes), dict(self.meta))

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the stem."""
        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{k}": v.detach().contiguous().cpu() for k, v in self.params.items()}
        tensors["mean"] = self.mean.detach().contiguous().cpu()
        tensors["std"] = self.std.detach().contiguous().cpu()
        header = {"format": FORMAT, "family": self.family, "kind": self.kind,
                  "classes": self.classes, "meta": self.meta}
        _atomic(_with(stem, ".safetensors"), lambda p: save_file(tensors, str(p)))
        _atomic(_with(stem, ".json"),
                lambda p: Path(p).write_text(json.dumps(header, indent=2, default=str)))
        return stem

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Probe:
        """Read a probe written by :meth:`save` (give the stem or either file)."""
        stem = _stem(path)
        js, st = _with(stem, ".json"), _with(stem, ".safetensors")
        if not js.exists() or not st.exists():
            raise StoreError(f"no probe at {stem} (need {js.name} and {st.name}): check the "
                             "path, e.g. <run>/probes/<site>__<position>__<family>")
        header = json.loads(js.read_text())
        if header.get("format") != FORMAT:
            raise StoreError(f"{js} is not a reprlab probe (format {header.get('format')!r})")
        tensors = load_file(str(st), device=str(device))
        params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
        return cls(header["family"], header["kind"], params, tensors["mean"], tensors["std"],
                   list(header["classes"]), dict(header.get("meta", {})))


def _stem(path: str | os.PathLike) -> Path:
    """The path without a .json / .safetensors ending (site names hold dots: no with_suffix)."""
    text = os.fspath(path)
    for ext in (".json", ".safetensors"):
        if text.endswith(ext):
            return Path(text[: -len(ext)])
    return Path(text)


def _with(stem: Path, ext: str) -> Path:
    return Path(os.fspath(stem) + ext)


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())  # mkstemp and safetensors make 0600; respect the umask
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
