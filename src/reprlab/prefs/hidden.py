"""Hidden states for representation preference losses: sites, masks and completion pooling.

Representation losses compare the policy's states at some sites with the reference's, one
vector per completion: the mean of the site's states over the **completion tokens only**
(prompt, padding and special tokens masked out), optionally dropping attention-sink tokens
(tokens whose state norm lies above the row's mean + 3 standard deviations; sinks carry huge,
content-free norms that would dominate a mean).

Policy states are read in the autograd graph with ``hooks.record(lm, sites, detach=False)``
and pooled as they are recorded (the ``[B, T, d]`` tensor never leaves the hook).

Sites use the common grammar (``layers.12``, ``layers.0:12:2``...). Two additions for this
workflow, resolved here before the grammar sees them:

* fractional range bounds, ``layers.0.5:-1`` = from half depth to the second-to-last block
  (the default of the ReprPO research, wassname/repr-preference-optimization);
* ``side=True``: instead of a block's output, the *inputs* of its attention and MLP output
  projections (``o_proj`` / ``down_proj`` and their names in other architectures), read with
  a pre-forward hook (the research's "side" variant). Names: ``layers.N.attn.in``,
  ``layers.N.mlp.in``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from reprlab.errors import SiteError
from reprlab.sites import Site, resolve_sites

if TYPE_CHECKING:
    from reprlab.models import LoadedModel

DEFAULT_SITES = "layers.0.5:-1"

#: child names of the projection that writes the attention / MLP output into the residual
_ATTN_OUT = ("o_proj", "c_proj", "dense", "out_proj")
_MLP_OUT = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2")

_FRAC_RANGE = re.compile(r"^layers\.(?P<a>-?\d*(?:\.\d+)?):(?P<b>-?\d*(?:\.\d+)?)$")


def _bound(text: str, n: int, spec: str) -> str:
    """A range bound as an integer string; fractions of depth map to round(f * (n - 1))."""
    if "." not in text:
        return text
    frac = float(text)
    if not 0.0 <= frac <= 1.0:
        raise SiteError(f"layer fraction in {spec!r} must lie in [0, 1]")
    return str(int(round(frac * (n - 1))))


def expand_fraction_ranges(spec: str | list[str] | tuple[str, ...], n_layers: int) -> list[str]:
    """``"layers.0.5:-1"`` -> ``["layers.3:-1"]`` for 7 blocks; other items pass unchanged."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in
                                                          str(s).split(",")]
    out = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        m = _FRAC_RANGE.match(item)
        if m and ("." in m.group("a") or "." in m.group("b")):
            item = f"layers.{_bound(m.group('a'), n_layers, item)}:{_bound(m.group('b'), n_layers, item)}"
        out.append(item)
    return out


def _child(module: torch.nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    return next((n for n in names if n in children), None)


def side_sites(lm: LoadedModel, blocks: list[Site]) -> list[Site]:
    """Pre-hook sites at the inputs of each block's attention and MLP output projections."""
    out: list[Site] = []
    arch = lm.arch
    for s in blocks:
        if s.kind != "block":
            raise SiteError(f"side inputs need block sites like layers.N, not {s.name!r}")
        i = s.layer
        block = lm.model.get_submodule(s.module_path)
        attn = arch.attn_names[i] if i < len(arch.attn_names) else None
        mlp = arch.mlp_names[i] if i < len(arch.mlp_names) else None
        for kind, parent, names in (("attn", attn, _ATTN_OUT), ("mlp", mlp, _MLP_OUT)):
            owner = block.get_submodule(parent) if parent else block
            proj = _child(owner, names)
            if proj is None:
                raise SiteError(
                    f"cannot find the {kind} output projection of block {i} "
                    f"({type(owner).__name__}); pass module:<path> sites instead of side=True")
            path = f"{s.module_path}.{parent}.{proj}" if parent else f"{s.module_path}.{proj}"
            out.append(Site(f"layers.{i}.{kind}.in", "side", path, i, hook="pre"))
    return out


def resolve_repr_sites(lm: LoadedModel, spec: str | list[str] | None = None,
                       side: bool = False) -> list[Site]:
    """Sites for a representation loss; raises :class:`SiteError` when none resolve."""
    spec = DEFAULT_SITES if spec is None or spec == "" else spec
    sites = resolve_sites(lm, expand_fraction_ranges(spec, lm.arch.n_layers))
    if not sites:
        raise SiteError(
            f"the site list {spec!r} resolves to no site on this {lm.arch.n_layers}-block "
            f"model; try {DEFAULT_SITES!r} (half depth to the second-to-last block)")
    if side:
        sites = side_sites(lm, sites)
    return sites


def completion_mask(attention_mask: torch.Tensor, prompt_mask: torch.Tensor | None = None,
                    special_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens to pool: real (attention 1), not prompt, not special. All ``[B, T]`` -> bool."""
    m = attention_mask.bool()
    if prompt_mask is not None:
        m = m & ~prompt_mask.bool()
    if special_mask is not None:
        m = m & ~special_mask.bool()
    return m


def special_token_mask(input_ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """``[B, T]`` bool: positions holding one of the tokenizer's special ids (bos/eos/pad...)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    if not ids:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    special = torch.tensor(sorted(ids), device=input_ids.device)
    return torch.isin(input_ids, special)


def sink_mask(hidden: torch.Tensor, mask: torch.Tensor, n_sigma: float = 3.0) -> torch.Tensor:
    """``[B, T]`` bool, True at attention-sink tokens: norm > row mean + ``n_sigma`` * std.

    Statistics are over the row's masked tokens (``mask [B, T]``); computed without gradient.
    A lone outlier among ``n`` tokens lies at most ``(n − 1)/√n`` standard deviations above
    the mean (the outlier inflates σ itself), so with ``n_sigma = 3`` nothing is dropped from
    completions shorter than 11 tokens — the short answers of the toy data included.
    """
    with torch.no_grad():
        m = mask.to(hidden.dtype)
        norms = hidden.detach().norm(dim=-1)
        n = m.sum(1, keepdim=True).clamp(min=1)
        mean = (norms * m).sum(1, keepdim=True) / n
        var = (((norms - mean) ** 2) * m).sum(1, keepdim=True) / (n - 1).clamp(min=1)
        return mask.bool() & (norms > mean + n_sigma * var.sqrt())


def pool_completion(hidden: torch.Tensor, mask: torch.Tensor, drop_sinks: bool = False,
                    n_sigma: float = 3.0) -> torch.Tensor:
    """Mean of ``hidden [B, T, d]`` over tokens where ``mask [B, T]`` is set -> ``[B, d]``.

    ``drop_sinks`` removes attention-sink tokens (see :func:`sink_mask`) from the mean; a row
    whose every token would be dropped keeps its mask. Rows with an empty mask give zeros.
    The selection is not differentiated; the mean is, so gradients reach every kept token.
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B, T, d] and mask [B, T], got {tuple(hidden.shape)} "
                         f"and {tuple(mask.shape)}")
    keep = mask.bool()
    if drop_sinks:
        kept = keep & ~sink_mask(hidden, keep, n_sigma)
        keep = torch.where(kept.any(1, keepdim=True), kept, keep)
    w = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


class Pooler:
    """Pooling state shared with the recording hooks: set ``mask`` before each forward."""

    def __init__(self, drop_sinks: bool = False, n_sigma: float = 3.0) -> None:
        self.drop_sinks = drop_sinks
        self.n_sigma = n_sigma
        self.mask: torch.Tensor | None = None

    def __call__(self, _name: str, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("Pooler.mask is not set; set it to the completion mask [B, T] "
                               "before the forward pass")
        return pool_completion(hidden, self.mask.to(hidden.device), self.drop_sinks,
                               self.n_sigma)


@contextlib.contextmanager
def pooled_states(lm: LoadedModel | torch.nn.Module, sites: list[Site], mask: torch.Tensor,
                  drop_sinks: bool = False, detach: bool = False,
                  n_sigma: float = 3.0) -> Iterator[dict[str, torch.Tensor]]:
    """Record completion-pooled states at ``sites`` during the forwards run in the body.

    Yields ``{site name: [B, d]}``, filled by the forward. ``detach=False`` (default) keeps
    the autograd graph, so a loss on these states trains the model.
    """
    from reprlab.hooks import record

    pooler = Pooler(drop_sinks, n_sigma)
    pooler.mask = mask
    with record(lm, sites, detach=detach, transform=pooler) as cache:
        yield cache
