"""Training methods: the contract a preference method fulfils to plug into the trainer.

The trainer loop (:mod:`reprlab.prefs.trainer`) never changes for a new method. Per optimiser
micro-batch it does::

    policy = forward(model with adapter, batch, sites=method.sites)   # in-graph
    reference = cache or forward(adapter disabled, no grad)           # only if needs_reference
    out = method.loss(policy, reference)                              # -> MethodOutput
    method.before_backward(ctx); (out.loss / accumulation).backward(); method.after_backward(ctx)
    clip, optimiser step, scheduler step                              # after the last micro-batch

A method is an object with these attributes (subclass :class:`Method` for the defaults):

``name: str``
    Registry name, written to results and manifests.
``needs_reference: bool``
    When False no reference is computed or cached and ``loss`` gets ``reference=None``.
``sites: tuple[str, ...]``
    Sites (grammar of :mod:`reprlab.sites`, e.g. ``("layers.3", "layers.4")``) whose hidden
    states the method reads. The trainer records them with
    ``reprlab.hooks.record(lm, sites, detach=False)`` during the policy forward and passes them
    **mean-pooled over the completion tokens** of each sequence (the tokens the completion mask
    marks: prompt, padding and special tokens excluded, the final end-of-turn token kept): ``policy.chosen_hidden[site]`` and
    ``policy.rejected_hidden[site]``, each ``[B, d]``, still in the autograd graph. The
    reference gets the same pooled states under the frozen base model, detached — from the
    reference cache when it is on (so a run with sites never re-runs the reference forward).
``loss(policy: SeqOutputs, reference: SeqOutputs | None) -> MethodOutput``
    ``SeqOutputs`` holds ``chosen_logps`` / ``rejected_logps`` ``[B]`` (log-probs **summed**
    over completion tokens), ``chosen_tokens`` / ``rejected_tokens`` ``[B]`` (token counts,
    for per-token means), and the pooled hidden states above. Return the scalar loss and a
    dict of extra scalar metrics (floats or 0-d tensors) that are logged every step.
``before_backward(ctx: StepContext)`` / ``after_backward(ctx: StepContext)``
    Optional hooks around each micro-batch's backward. ``ctx.params`` lists the trainable
    ``(name, parameter)`` pairs, so ``after_backward`` can edit ``p.grad`` (e.g. project the
    gradient) before clipping and the optimiser step; with ``--grad-accum`` the gradients
    accumulate over micro-batches, and ``ctx.last_micro_batch`` is True on the last one, just
    before the step. ``ctx.state`` is a dict the method owns for the whole process (not saved
    on resume: keep what must survive a kill in ``state_tensors``). The logged step metrics
    are the means over micro-batches of ``loss``, of the returned metrics and of the rewards
    (β × log-ratio, with the method's ``beta`` attribute when it has one).
``record(lm) -> context manager yielding {site: [N, T, d]}``
    Optional: how the states at ``sites`` are read during a forward (default:
    ``hooks.record(lm, sites, detach=False)``). Override it for places the site grammar does
    not name (e.g. the inputs of output projections, read with pre-forward hooks).
``pool(site, hidden [N, T, d], attention_mask [N, T], completion_mask [N, T]) -> [N, d]``
    Optional: how a site's states become one vector per sequence (default: the mean over
    completion tokens). The same function pools the reference states for the cache (the
    cache key includes the method's ``pool_id``, a string naming the pooling).
``state_tensors() -> dict[str, Tensor]`` / ``load_state_tensors(dict)``
    Optional tensors the method keeps across steps; saved with the resumable training state.

Register a method factory with :func:`register_method`; the factory receives the run's
:class:`MethodOptions` (the common β, label smoothing, aggregation, NLL weight, plus a free
``extra`` dict from ``--method-options key=value,...``). Modules listed in
:data:`PLUGIN_MODULES` are imported on first lookup, so a method package registers itself by
being named there (or by being imported before ``train`` is called).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.prefs.losses import AGGREGATIONS, LOSSES, PairLogps, compute_loss

logger = logging.getLogger(__name__)

#: modules imported on the first method lookup (missing ones are skipped)
PLUGIN_MODULES: tuple[str, ...] = ("reprlab.prefs.repr_losses", "reprlab.prefs.repr",
                                   "reprlab.reprpo")


@dataclass(frozen=True)
class SeqOutputs:
    """Per-pair outputs of one forward over chosen and rejected completions.

    chosen_logps, rejected_logps:   [B] log-probs summed over completion tokens
    chosen_tokens, rejected_tokens: [B] completion token counts
    chosen_hidden, rejected_hidden: site -> [B, d], mean over completion tokens
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_hidden: Mapping[str, torch.Tensor] = field(default_factory=dict)
    rejected_hidden: Mapping[str, torch.Tensor] = field(default_factory=dict)


def pair_logps(policy: SeqOutputs, reference: SeqOutputs | None) -> PairLogps:
    return PairLogps(policy.chosen_logps, policy.rejected_logps,
                     None if reference is None else reference.chosen_logps,
                     None if reference is None else reference.rejected_logps,
                     policy.chosen_tokens, policy.rejected_tokens)


@dataclass
class MethodOutput:
    loss: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """What the backward hooks see."""

    step: int
    micro_batch: int
    last_micro_batch: bool
    model: torch.nn.Module
    params: list[tuple[str, torch.nn.Parameter]]
    policy: SeqOutputs
    reference: SeqOutputs | None
    output: MethodOutput
    state: dict[str, Any]


@dataclass(frozen=True)
class MethodOptions:
    """Options every method receives; ``extra`` holds method-specific ones."""

    beta: float = 0.1
    label_smoothing: float | None = None
    aggregation: str = "sum"
    nll_weight: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Method:
    """Defaults for the contract above."""

    name = "method"
    needs_reference = True
    sites: tuple[str, ...] = ()

    def loss(self, policy: SeqOutputs, reference: SeqOutputs | None) -> MethodOutput:
        raise NotImplementedError

    def before_backward(self, ctx: StepContext) -> None:
        return None

    def after_backward(self, ctx: StepContext) -> None:
        return None

    pool_id = "mean:completion"

    def record(self, lm: Any):
        from reprlab import hooks

        return hooks.record(lm, list(self.sites), detach=False)

    def pool(self, site: str, hidden: torch.Tensor, attention_mask: torch.Tensor,
             completion_mask: torch.Tensor) -> torch.Tensor:
        from reprlab.positions import pool

        return pool(hidden, attention_mask, "mean:span", completion_mask)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "needs_reference": self.needs_reference,
                "sites": list(self.sites)}


class LossMethod(Method):
    """A DPO-family method: a loss from :data:`reprlab.prefs.losses.LOSSES` (+ NLL term)."""

    def __init__(self, name: str, loss: str, beta: float, label_smoothing: float,
                 aggregation: str, nll_weight: float):
        self.name, self.loss_name = name, loss
        self.beta, self.label_smoothing = beta, label_smoothing
        self.aggregation, self.nll_weight = aggregation, nll_weight
        self.needs_reference = LOSSES[loss].needs_reference

    def loss(self, policy: SeqOutputs, reference: SeqOutputs | None) -> MethodOutput:
        value = compute_loss(self.loss_name, pair_logps(policy, reference), beta=self.beta,
                             label_smoothing=self.label_smoothing, aggregation=self.aggregation,
                             nll_weight=self.nll_weight)
        return MethodOutput(value)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loss": self.loss_name, "beta": self.beta,
                "label_smoothing": self.label_smoothing, "aggregation": self.aggregation,
                "nll_weight": self.nll_weight}


MethodFactory = Callable[[MethodOptions], Method]
METHODS: dict[str, MethodFactory] = {}
_SUMMARIES: dict[str, str] = {}


def register_method(name: str, summary: str = "") -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: ``@register_method("mymethod")`` on a factory ``(MethodOptions) -> Method``."""
    def deco(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = factory
        _SUMMARIES[name] = summary
        return factory
    return deco


def _loss_method(name: str, loss: str, smoothing: float, nll: float, summary: str) -> None:
    def factory(opts: MethodOptions) -> Method:
        if opts.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown --aggregation {opts.aggregation!r}; use sum or mean")
        eps = smoothing if opts.label_smoothing is None else opts.label_smoothing
        if loss in ("robust", "conservative") and not 0 <= eps < 0.5:
            raise ConfigError(f"--label-smoothing for {name} must be in [0, 0.5), got {eps}")
        if opts.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {opts.beta}")
        if opts.extra:
            raise ConfigError(f"method {name} takes no --method-options (got {sorted(opts.extra)})")
        return LossMethod(name, loss, opts.beta, eps, opts.aggregation,
                          nll if opts.nll_weight is None else opts.nll_weight)
    register_method(name, summary)(factory)


_loss_method("dpo", "sigmoid", 0.0, 0.0, "standard DPO (sigmoid loss)")
_loss_method("ipo", "ipo", 0.0, 0.0, "IPO, length-normalised as in TRL")
_loss_method("cdpo", "conservative", 0.1, 0.0, "conservative DPO (label smoothing, default 0.1)")
_loss_method("hinge", "hinge", 0.0, 0.0, "hinge loss on the DPO margin")
_loss_method("robust", "robust", 0.1, 0.0, "robust DPO (flip rate, default 0.1)")
_loss_method("simper", "simper", 0.0, 0.0, "SimPER, reference-free")
_loss_method("rpo", "sigmoid", 0.0, 1.0, "DPO + NLL of the chosen completions (weight 1)")

_loaded_plugins = False


def _load_plugins() -> None:
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    for mod in PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue
            logger.warning("method plugin %s could not be imported: %s", mod, exc)
        except Exception as exc:  # a broken plugin must not break the built-in methods
            logger.warning("method plugin %s could not be imported: %s", mod, exc)


def available_methods() -> dict[str, str]:
    _load_plugins()
    return {k: _SUMMARIES.get(k, "") for k in METHODS}


def build_method(name: str, options: MethodOptions | None = None) -> Method:
    """The method ``name`` built with ``options``; one clear error for unknown names."""
    _load_plugins()
    if name not in METHODS:
        raise ConfigError(f"unknown --method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](options or MethodOptions())
