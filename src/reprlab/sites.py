"""A small grammar that names the same place inside every supported architecture.

Grammar (comma-separated lists are accepted everywhere)::

    embed                 input of block 0 (= hidden_states[0] of HF models)
    layers.12             output of block 12 (negative indices count from the end)
    layers.0.5            block at a fraction of depth (0.0 first, 1.0 last)
    layers.0:12:2         a range (Python slice, end exclusive)
    layers.*              every block
    layers.3.attn         attention output of block 3 (before the residual add)
    layers.*.mlp          MLP output of every block (BERT: the block's output sub-layer)
    final_norm            output of the final norm (where the model has one)
    module:<path>         any module by its dotted path (escape hatch)

Block outputs are what HF reports as ``hidden_states[i + 1]``, except that the last entry of
``hidden_states`` has the final norm applied on most decoders (GPT-2, Llama...): read
``final_norm`` for that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from reprlab.errors import SiteError

if TYPE_CHECKING:
    from reprlab.models import ArchInfo, LoadedModel

_LAYER_RE = re.compile(r"^layers\.(?P<sel>[^.]+(?:\.\d+)?(?::[^.]*)*)(?:\.(?P<sub>attn|mlp))?$")


@dataclass(frozen=True)
class Site:
    """A resolved place in a model.

    ``layer`` orders sites by depth: -1 for ``embed``, the block index for block/attn/mlp
    sites, ``n_layers`` for ``final_norm`` and ``None`` for raw module paths.
    ``hook`` is "forward" (read the module's output) or "pre" (read its first input).
    """

    name: str
    kind: str
    module_path: str
    layer: int | None
    hook: str = "forward"

    def module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.module_path) if self.module_path else model


def _valid_help(arch: ArchInfo) -> str:
    extra = ", final_norm" if arch.final_norm_path else ""
    return (f"valid sites: embed, layers.0 .. layers.{arch.n_layers - 1} (or negative, "
            f"fractions like layers.0.5, ranges like layers.0:{arch.n_layers}:2, layers.*), "
            f"layers.N.attn, layers.N.mlp{extra}, module:<path>")


def _layer_indices(sel: str, n: int, arch: ArchInfo, spec: str) -> list[int]:
    if sel == "*":
        return list(range(n))
    if ":" in sel:
        parts = sel.split(":")
        try:
            nums = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise SiteError(f"bad layer range in {spec!r}; {_valid_help(arch)}") from None
        if len(nums) > 3:
            raise SiteError(f"bad layer range in {spec!r}; {_valid_help(arch)}")
        if len(nums) == 3 and nums[2] == 0:
            raise SiteError(f"layer range {spec!r} has step 0; use a step of 1 or more, e.g. "
                            f"layers.0:{n}:2")
        picked = list(range(n))[slice(*nums)]
        if not picked:
            raise SiteError(f"layer range {spec!r} selects no layer of a model with {n} "
                            f"layers; {_valid_help(arch)}")
        return picked
    if "." in sel:
        try:
            frac = float(sel)
        except ValueError:
            raise SiteError(f"bad layer fraction in {spec!r}; {_valid_help(arch)}") from None
        if not 0.0 <= frac <= 1.0:
            raise SiteError(f"layer fraction in {spec!r} must lie in [0, 1]")
        return [int(round(frac * (n - 1)))]
    try:
        idx = int(sel)
    except ValueError:
        raise SiteError(f"unknown site {spec!r}; {_valid_help(arch)}") from None
    if not -n <= idx < n:
        raise SiteError(
            f"layer index {idx} in {spec!r} is out of range for a model with {n} layers; "
            f"{_valid_help(arch)}")
    return [idx % n]


def parse_sites(spec: str | list[str] | tuple[str, ...], arch: ArchInfo) -> list[Site]:
    """Turn a site spec into resolved :class:`Site` objects (deduplicated, in given order)."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [s.strip() for part in spec for s in str(part).split(",") if s.strip()]
    if not items:
        raise SiteError(f"no site given; {_valid_help(arch)}")
    n = arch.n_layers
    out: dict[str, Site] = {}
    for item in items:
        if item.startswith("module:"):
            path = item[len("module:"):]
            out[item] = Site(item, "module", path, None)
            continue
        if item == "embed":
            out[item] = Site("embed", "embed", f"{arch.layers_path}.0", -1, hook="pre")
            continue
        if item in ("final_norm", "norm", "ln_f"):
            if not arch.final_norm_path:
                raise SiteError(f"this model ({arch.model_type}) has no final norm; "
                                f"{_valid_help(arch)}")
            out["final_norm"] = Site("final_norm", "final_norm", arch.final_norm_path, n)
            continue
        m = _LAYER_RE.match(item)
        if not m:
            raise SiteError(f"unknown site {item!r}; {_valid_help(arch)}")
        sub = m.group("sub")
        for i in _layer_indices(m.group("sel"), n, arch, item):
            base = f"{arch.layers_path}.{i}"
            if sub is None:
                out[f"layers.{i}"] = Site(f"layers.{i}", "block", base, i)
                continue
            names = arch.attn_names if sub == "attn" else arch.mlp_names
            child = names[i] if i < len(names) else None
            if child is None:
                raise SiteError(f"block {i} of this model has no {sub} sub-module; "
                                "use module:<path> instead")
            out[f"layers.{i}.{sub}"] = Site(f"layers.{i}.{sub}", sub, f"{base}.{child}", i)
    return list(out.values())


def check_site_grammar(spec: str) -> None:
    """:class:`SiteError` (one line) for an item of ``spec`` that no model could resolve,
    checked before any model is built or loaded."""
    for item in (s.strip() for s in str(spec).split(",")):
        if not item or item.startswith("module:") or item in (
                "embed", "final_norm", "norm", "ln_f") or _LAYER_RE.match(item):
            continue
        raise SiteError(f"unknown site {item!r}; sites are embed, layers.N (or negative, "
                        "fractions like layers.0.5, ranges like layers.0:2, layers.*), "
                        "layers.N.attn, layers.N.mlp, final_norm or module:<path>")


def resolve_sites(lm: LoadedModel, spec: str | list[str] | tuple[str, ...]) -> list[Site]:
    """Resolve ``spec`` on a loaded model, checking that raw module paths exist."""
    sites = parse_sites(spec, lm.arch)
    for s in sites:
        if s.kind == "module":
            try:
                lm.model.get_submodule(s.module_path)
            except AttributeError:
                raise SiteError(f"no module {s.module_path!r} in {lm.name}; "
                                "list them with model.named_modules()") from None
    return sites


def deepest(sites: list[Site]) -> Site | None:
    """The deepest site, or None when any site has unknown depth (raw module paths)."""
    if any(s.layer is None for s in sites):
        return None
    return max(sites, key=lambda s: (s.layer, s.kind == "block"))
