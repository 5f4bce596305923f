"""Read, replace and add at sites, as context managers that always restore the model.

The same hooks serve no-grad capture (``record(..., detach=True)``) and in-graph use
(``record(..., detach=False)`` keeps the autograd graph; ``edit`` writes activations during a
forward pass, gradients flow through the edit).

Block outputs are a tensor in transformers 5 and a tuple in older releases; both are handled
by :func:`get_hidden` / :func:`replace_hidden` (indexing ``[0]`` on a tensor would silently
take the first batch row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from reprlab.sites import Site, resolve_sites

if TYPE_CHECKING:
    from reprlab.models import LoadedModel

EditFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (caught by :func:`stop_after`)."""


def get_hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (tensor, tuple/list or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise TypeError(f"cannot find a hidden-state tensor in a {type(output).__name__}")


def replace_hidden(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``new`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    if hasattr(output, "to_tuple"):
        key = next(iter(output.keys()))
        output[key] = new
        return output
    raise TypeError(f"cannot replace the hidden state in a {type(output).__name__}")


def _model_of(lm: LoadedModel | nn.Module) -> nn.Module:
    return lm if isinstance(lm, nn.Module) else lm.model


def _sites(lm: LoadedModel | nn.Module, sites: Any) -> list[Site]:
    if isinstance(sites, Site):
        return [sites]
    if isinstance(sites, (list, tuple)) and sites and all(isinstance(s, Site) for s in sites):
        return list(sites)
    if isinstance(lm, nn.Module):
        raise TypeError("pass resolved Site objects when hooking a bare nn.Module")
    return resolve_sites(lm, sites)


def attach(model: nn.Module, site: Site, fn: EditFn) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn(hidden) -> new hidden | None`` at ``site``; returns the handle."""
    module = site.module(model)
    if site.hook == "pre":
        def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            if new is None:
                return None
            return args, {**kwargs, "hidden_states": new}
        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(_mod: nn.Module, _args: tuple, output: Any) -> Any:
        new = fn(get_hidden(output))
        return None if new is None else replace_hidden(output, new)
    return module.register_forward_hook(hook)


@contextlib.contextmanager
def hooked(lm: LoadedModel | nn.Module, fns: Mapping[Site, EditFn]) -> Iterator[None]:
    """Attach several hooks; all are removed on exit, also when the body raises."""
    model = _model_of(lm)
    handles = []
    try:
        for site, fn in fns.items():
            handles.append(attach(model, site, fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record(lm: LoadedModel | nn.Module, sites: Any, detach: bool = True,
           transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
           stop: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden states at ``sites`` during forwards run in the body.

    Yields a dict ``site name -> tensor [B, T, d]`` (the last forward's values).
    ``detach=False`` keeps the graph (for training on representations). ``transform(name, h)``
    reduces a value as it is recorded (e.g. pooling). ``stop=True`` ends the forward right
    after the deepest site (wrap the forward in :func:`stop_after` or catch
    :class:`StopForward`).
    """
    from reprlab.sites import deepest

    resolved = _sites(lm, sites)
    cache: dict[str, torch.Tensor] = {}
    last = deepest(resolved) if stop else None

    def make(site: Site) -> EditFn:
        def fn(h: torch.Tensor) -> None:
            v = h.detach() if detach else h
            cache[site.name] = transform(site.name, v) if transform else v
            if last is not None and site.name == last.name:
                raise StopForward
        return fn

    with hooked(lm, {s: make(s) for s in resolved}):
        yield cache


@contextlib.contextmanager
def edit(lm: LoadedModel | nn.Module, edits: Mapping[Any, EditFn]) -> Iterator[None]:
    """Replace activations: ``{site: fn}`` with ``fn(hidden [B,T,d]) -> new [B,T,d]``."""
    fns: dict[Site, EditFn] = {}
    for key, fn in edits.items():
        for s in _sites(lm, key if isinstance(key, Site) else [key]):
            fns[s] = fn
    with hooked(lm, fns):
        yield


@contextlib.contextmanager
def add(lm: LoadedModel | nn.Module, site: Any, vector: torch.Tensor,
        coeff: float = 1.0, start: int | None = None) -> Iterator[None]:
    """Add ``coeff * vector`` to the hidden state at ``site`` (tokens ``start:`` when given)."""
    def fn(h: torch.Tensor) -> torch.Tensor:
        v = (coeff * vector).to(device=h.device, dtype=h.dtype)
        if start is None:
            return h + v
        out = h.clone()
        out[:, start:] = out[:, start:] + v
        return out
    with edit(lm, {site: fn}):
        yield


def run_until_stop(call: Callable[[], Any]) -> Any:
    """Run ``call()``; a :class:`StopForward` raised by a hook ends it quietly (returns None)."""
    try:
        return call()
    except StopForward:
        return None


def hook_count(model: nn.Module) -> int:
    """Number of forward and pre-forward hooks on ``model`` and its sub-modules.

    transformers registers hooks of its own on some models: compare counts, not zero.
    """
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
