"""Representation preference methods, registered with the preference trainer.

Registers ``innerdpo``, ``prefvec``, ``mse``, ``rank``, ``topk`` (a hidden-state loss from
:mod:`reprlab.prefs.repr_losses`, with an optional transform from
:mod:`reprlab.prefs.transforms`) and ``projgrad``, ``projbp`` (DPO with the gradient
projection of :mod:`reprlab.prefs.projection`) in :data:`reprlab.prefs.methods.METHODS`;
the trainer imports this module on its first method lookup.

Method options (``method_options`` / ``--method-options key=value,...``):

* every representation method: ``sites`` (site grammar; default ``layers.0.5:-1``, half depth
  to the second-to-last block), ``transform`` (none, ether, etherplus, hra, ortho, supressed),
  ``transform_lr`` (its own AdamW step, default 1e-3), ``transform_<option>`` (e.g.
  ``transform_n_blocks=4``), ``side`` (true/attn/mlp: read the inputs of the blocks'
  attention and/or MLP output projections instead of their outputs), ``drop_sinks`` (drop
  attention-sink tokens, norm > mean + ``sink_sigma`` (3) σ, from the completion mean; the
  reference cache is keyed by it), and the options of the loss (``align``, ``alpha``, ``trust_region``,
  ``detach_rejected``, ``k``...; see each loss's options class). The run's ``--beta`` is the
  β of the loss's output term where it has one.
* ``projgrad`` / ``projbp``: ``orth`` (β of the orthogonal part; research defaults 0.8 / 1.0),
  ``slope`` (0.0 / 0.1), ``mag_clip``.

Sites. The trainer records ``method.sites`` by name, so they must be concrete names
(``layers.3``, ``layers.3.attn``...). :meth:`ReprMethod.bind` resolves any grammar (fractions,
ranges, negative indices) on a loaded model; without it only names that need no model are
accepted (``layers.2,layers.3``, explicit ranges ``layers.2:5``), and anything else is refused
with a line saying so when the trainer first reads ``sites`` (the run directory then has no
manifest, so it never looks finished). :func:`reprlab.prefs.repr_train.train` resolves the
spec on the model before training; a trainer that calls ``method.bind(lm)`` after loading the
model (before the reference cache) gives every entry point the full grammar.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.prefs.hidden import DEFAULT_SITES, resolve_repr_sites
from reprlab.prefs.losses import AGGREGATIONS, aggregate
from reprlab.prefs.methods import (
    LossMethod,
    Method,
    MethodOptions,
    MethodOutput,
    SeqOutputs,
    StepContext,
    register_method,
)
from reprlab.prefs.projection import ProjBP, ProjectionOptions, ProjGrad, adapter_modules
from reprlab.prefs.repr_losses import REPR_LOSSES, ReprInputs, make_options, option_names
from reprlab.prefs.transforms import build_transform

logger = logging.getLogger(__name__)

#: orthogonal transforms, and the losses that see only inner products and norms (for which an
#: orthogonal map applied to policy and reference alike changes neither value nor gradient)
_ORTHOGONAL = ("ether", "hra", "ortho", "orthogonal")
_ROTATION_INVARIANT = ("innerdpo", "mse", "prefvec")
_NAME = re.compile(r"^(layers\.\d+(\.(attn|mlp))?|embed|final_norm|module:.+)$")
_RANGE = re.compile(r"^layers\.(\d+):(\d+)(?::(\d+))?$")


def model_free_sites(spec: str) -> tuple[str, ...] | None:
    """Concrete site names when ``spec`` needs no model to resolve, else None."""
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = _RANGE.match(item)
        if m:
            a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
            out += [f"layers.{i}" for i in range(a, b, step)]
        elif _NAME.match(item):
            out.append(item)
        else:
            return None
    return tuple(dict.fromkeys(out)) or None


def _split_options(extra: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[dict, dict]:
    mine = {k: v for k, v in extra.items() if k in keys or k.startswith("transform_")}
    rest = {k: v for k, v in extra.items() if k not in mine}
    return mine, rest


class ReprMethod(Method):
    """A hidden-state loss on completion-pooled states (+ an optional trained transform)."""

    needs_reference = True

    def __init__(self, loss: str, opts: MethodOptions, lm: Any = None) -> None:
        self.name = loss
        if opts.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown --aggregation {opts.aggregation!r}; use sum or mean")
        extra = {k.replace("-", "_"): v for k, v in dict(opts.extra).items()}
        mine, loss_kw = _split_options(extra, ("sites", "transform", "transform_lr", "side",
                                               "drop_sinks", "sink_sigma"))
        side = mine.get("side", False)
        side = {True: "both", False: None, None: None, "true": "both", "false": None,
                "both": "both", "attn": "attn", "mlp": "mlp"}.get(
                    side.lower() if isinstance(side, str) else side, "bad")
        if side == "bad":
            raise ConfigError(f"side must be true, false, attn or mlp (got {mine['side']!r})")
        self.side = side
        sinks = mine.get("drop_sinks", False)
        self.drop_sinks = (sinks.lower() in ("true", "1", "yes") if isinstance(sinks, str)
                           else bool(sinks))
        self.sink_sigma = float(mine.get("sink_sigma", 3.0))
        if self.drop_sinks:
            self.pool_id = f"mean:completion:nosinks{self.sink_sigma:g}"
        self.site_spec = str(mine.get("sites") or DEFAULT_SITES)
        self.transform_name = str(mine.get("transform") or "none")
        self.transform_lr = float(mine.get("transform_lr", 1e-3))
        self.transform_options = {k[len("transform_"):]: v for k, v in mine.items()
                                  if k.startswith("transform_") and k != "transform_lr"}
        if "beta" in option_names(loss) and "beta" not in loss_kw:
            loss_kw["beta"] = opts.beta
        self.options = make_options(loss, **loss_kw)
        if loss == "innerdpo" and self.options.alpha == 0:
            logger.warning("innerdpo with alpha=0 has no hidden-state term: the run is plain "
                           "%s", "IPO" if self.options.loss_type == "ipo" else "DPO")
        if (self.transform_name.lower() in _ORTHOGONAL and loss in _ROTATION_INVARIANT):
            logger.warning("the %s transform is orthogonal and the %s loss depends only on "
                           "inner products and norms: the transform changes nothing (use "
                           "etherplus, or a coordinate-wise loss: rank, topk)",
                           self.transform_name, loss)
        self.aggregation = opts.aggregation
        self.spec = REPR_LOSSES[loss]
        self._sites = model_free_sites(self.site_spec)
        self.transform: torch.nn.Module | None = None
        self._topt: torch.optim.Optimizer | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._unembed: torch.Tensor | None = None
        if lm is not None:
            self.bind(lm)

    # ----------------------------------------------------------------------------- sites
    def bind(self, lm: Any) -> None:
        """Resolve the site spec on a loaded model (and keep its unembedding for SupressedHS)."""
        sites = resolve_repr_sites(lm, self.site_spec)
        self._sites = tuple(s.name for s in sites)
        head = lm.model.get_output_embeddings()
        self._unembed = None if head is None else head.weight.detach()
        if self.side is None:
            self._build_transform({s: lm.arch.hidden_size for s in self.sites})

    @property
    def blocks(self) -> tuple[str, ...]:
        """The resolved site names before the side expansion."""
        if self._sites is None:
            raise ConfigError(
                f"the site spec {self.site_spec!r} needs the model to resolve; pass concrete "
                "sites (e.g. method option sites=layers.2,layers.3) or train with "
                "reprlab.prefs.repr_train.train, which resolves it")
        return self._sites

    @property
    def sites(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.side is None:
            return self.blocks
        kinds = ("attn", "mlp") if self.side == "both" else (self.side,)
        bad = [b for b in self.blocks if not re.match(r"^layers\.\d+$", b)]
        if bad:
            raise ConfigError(f"side inputs need block sites like layers.N, not {bad[0]!r}")
        return tuple(f"{b}.{k}.in" for b in self.blocks for k in kinds)

    def record(self, lm: Any):
        """Block sites through the grammar; side inputs with pre-forward hooks."""
        from reprlab import hooks
        from reprlab.prefs.hidden import side_sites
        from reprlab.sites import resolve_sites

        if self.side is None:
            return hooks.record(lm, list(self.sites), detach=False)
        wanted = set(self.sites)
        found = [s for s in side_sites(lm, resolve_sites(lm, list(self.blocks)))
                 if s.name in wanted]
        return hooks.record(lm, found, detach=False)

    def pool(self, site: str, hidden: torch.Tensor, attention_mask: torch.Tensor,
             completion_mask: torch.Tensor) -> torch.Tensor:
        """Mean over completion tokens; attention sinks dropped when ``drop_sinks``."""
        if not self.drop_sinks:
            return super().pool(site, hidden, attention_mask, completion_mask)
        from reprlab.prefs.hidden import pool_completion

        return pool_completion(hidden, completion_mask.bool(), True, self.sink_sigma)

    # ------------------------------------------------------------------------ transforms
    def _build_transform(self, widths: Mapping[str, int]) -> None:
        if self.transform is not None:
            return
        self.transform = build_transform(self.transform_name, widths, unembed=self._unembed,
                                         **self.transform_options)
        params = [p for p in self.transform.parameters() if p.requires_grad]
        if params:
            self._topt = torch.optim.AdamW(params, lr=self.transform_lr, weight_decay=0.0)
        if self._pending:
            self._load_now(self._pending)
            self._pending = {}

    def _apply(self, states: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.transform(states)

    # ----------------------------------------------------------------------------- loss
    def loss(self, policy: SeqOutputs, reference: SeqOutputs | None) -> MethodOutput:
        if reference is None:
            raise ConfigError(f"{self.name} needs the reference (turn the reference on)")
        missing = [s for s in self.sites if s not in policy.chosen_hidden
                   or s not in reference.chosen_hidden]
        if missing:
            raise ConfigError(f"no hidden states at {', '.join(missing)}; the trainer must "
                              "record the method's sites")
        if self.transform is None:
            self._build_transform({s: policy.chosen_hidden[s].shape[-1] for s in self.sites})
        dev = policy.chosen_logps.device
        self.transform.to(dev)
        pc = self._apply({s: policy.chosen_hidden[s] for s in self.sites})
        pr = self._apply({s: policy.rejected_hidden[s] for s in self.sites})
        rc = self._apply({s: reference.chosen_hidden[s].to(dev) for s in self.sites})
        rr = self._apply({s: reference.rejected_hidden[s].to(dev) for s in self.sites})
        agg = self.aggregation
        x = ReprInputs(pc, pr, rc, rr,
                       logp_pi_cho=aggregate(policy.chosen_logps, policy.chosen_tokens, agg),
                       logp_pi_rej=aggregate(policy.rejected_logps, policy.rejected_tokens, agg),
                       logp_ref_cho=aggregate(reference.chosen_logps.to(dev),
                                              reference.chosen_tokens.to(dev), agg),
                       logp_ref_rej=aggregate(reference.rejected_logps.to(dev),
                                              reference.rejected_tokens.to(dev), agg))
        out = self.spec.fn(x, self.options)
        return MethodOutput(out.loss, {f"repr/{k}": v for k, v in out.metrics.items()})

    def after_backward(self, ctx: StepContext) -> None:
        if self._topt is not None and ctx.last_micro_batch:
            self._topt.step()
            self._topt.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------------- state, info
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.transform is None:
            return {}
        out = {f"transform.{k}": v.detach().cpu() for k, v in self.transform.state_dict().items()}
        if self._topt is not None:
            for pid, st in self._topt.state_dict()["state"].items():
                for k, v in st.items():
                    out[f"transform_opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        mine = {k: v for k, v in tensors.items() if k.startswith("transform")}
        if not mine:
            return
        if self.transform is None:
            self._pending = dict(mine)  # applied once the transform is built
        else:
            self._load_now(mine)

    def _load_now(self, tensors: Mapping[str, torch.Tensor]) -> None:
        sd = {k[len("transform."):]: v for k, v in tensors.items() if k.startswith("transform.")}
        self.transform.load_state_dict(sd)
        if self._topt is not None:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("transform_opt."):
                    _, pid, name = k.split(".", 2)
                    state.setdefault(int(pid), {})[name] = v
            sd_opt = self._topt.state_dict()
            self._topt.load_state_dict({"state": state, "param_groups": sd_opt["param_groups"]})

    def describe(self) -> dict[str, Any]:
        opts = {f: getattr(self.options, f) for f in option_names(self.name)}
        return {"name": self.name, "needs_reference": True, "site_spec": self.site_spec,
                "sites": list(self.sites) if self._sites else [], "side": self.side,
                "drop_sinks": self.drop_sinks, "sink_sigma": self.sink_sigma,
                "transform": self.transform_name,
                "transform_options": dict(self.transform_options),
                "transform_lr": self.transform_lr, "aggregation": self.aggregation,
                "loss_options": opts}


class ProjectionMethod(Method):
    """DPO whose gradients are projected along each adapter module's preference direction.

    The hooks are attached when the trainer first asks the method how to record its sites
    (``record(lm)``, before the first forward; the one site, ``layers.0``, is recorded without
    gradient and otherwise unused), or at the first ``before_backward`` by a trainer that
    records nothing — then the first micro-batch trains with the plain DPO gradient
    (``proj/active`` = 0 in its log line). Directions come from the policy's own forward
    (detached): a forward pre-hook on the backbone takes the attention mask, and each module's
    output is **summed** over attended tokens. Chosen and rejected rows share the prompt, and
    a causal model's states at prompt positions do not depend on the completion, so the
    prompt's contribution cancels exactly in (chosen − rejected): the direction is that of the
    completion-token sums.
    """

    needs_reference = True
    sites: tuple[str, ...] = ("layers.0",)

    def __init__(self, kind: str, opts: MethodOptions) -> None:
        self.name = kind
        extra = {k.replace("-", "_"): v for k, v in dict(opts.extra).items()}
        defaults = {"projgrad": (0.8, 0.0), "projbp": (1.0, 0.1)}[kind]
        bad = [k for k in extra if k not in ("orth", "slope", "mag_clip")]
        if bad:
            raise ConfigError(f"option {', '.join(bad)} does not apply to {kind}; its options "
                              "are orth, slope, mag_clip")
        clip = extra.get("mag_clip")
        self.proj = ProjectionOptions(beta=float(extra.get("orth", defaults[0])),
                                      slope=float(extra.get("slope", defaults[1])),
                                      mag_clip=None if clip in (None, "", "none") else float(clip))
        if opts.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {opts.beta}")
        if self.proj.beta == 1.0 and self.proj.slope == 1.0 and self.proj.mag_clip is None:
            logger.warning("%s with orth=1, slope=1 and no mag_clip leaves every gradient as "
                           "it is: the run is plain DPO", kind)
        ls = opts.label_smoothing or 0.0
        self.dpo = LossMethod(kind, "sigmoid", opts.beta, ls, opts.aggregation,
                              opts.nll_weight or 0.0)
        self.beta = opts.beta
        self.projector: ProjGrad | ProjBP | None = None
        self._handles: list[Any] = []

    def loss(self, policy: SeqOutputs, reference: SeqOutputs | None) -> MethodOutput:
        out = self.dpo.loss(policy, reference)
        # directions of this forward already observed: the backward will be projected
        out.metrics["proj/active"] = float(bool(self.projector is not None
                                                and self.projector.dirs))
        return out

    def _attach(self, model: torch.nn.Module) -> None:
        mods = adapter_modules(model)
        cls = ProjGrad if self.name == "projgrad" else ProjBP
        self.projector = cls(mods, self.proj, pool="sum")
        backbone = _backbone(model)

        def pre(_mod, args, kwargs):
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            if mask is None and ids is not None:
                mask = torch.ones_like(ids)
            if mask is None or mask.shape[0] % 2:
                self.projector.set_batch(None, None)
                return None
            n = mask.shape[0] // 2
            chosen = torch.zeros(mask.shape[0], dtype=torch.bool)
            chosen[:n] = True
            self.projector.set_batch(mask, chosen)
            return None

        self._handles.append(backbone.register_forward_pre_hook(pre, with_kwargs=True))

    def record(self, lm: Any):
        from reprlab import hooks

        if self.projector is None:
            try:
                self._attach(lm.model)
            except ConfigError:  # adapter disabled (the reference pass): attach next time
                pass
        return hooks.record(lm, list(self.sites), detach=True)

    def before_backward(self, ctx: StepContext) -> None:
        if self.projector is None:
            self._attach(ctx.model)

    def after_backward(self, ctx: StepContext) -> None:
        # parameter gradients accumulate over micro-batches: project the sum once, before
        # the step, along the last micro-batch's direction
        if (isinstance(self.projector, ProjGrad) and self.projector.dirs
                and ctx.last_micro_batch):
            info = self.projector.apply(strict=False)
            ctx.output.metrics.update({f"proj/{k}": v for k, v in info.items()})

    def close(self) -> None:
        """Remove the hooks from the model."""
        if self.projector is not None:
            self.projector.remove()
        for h in self._handles:
            h.remove()
        self._handles, self.projector = [], None

    def describe(self) -> dict[str, Any]:
        return {**self.dpo.describe(), "name": self.name, "orth": self.proj.beta,
                "slope": self.proj.slope, "mag_clip": self.proj.mag_clip}


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of a (PEFT-wrapped) causal LM, whose forward gets the masks."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    bb = getattr(inner, "base_model", None)
    return bb if isinstance(bb, torch.nn.Module) and bb is not inner else inner


_SUMMARY = {
    "innerdpo": "DPO + alpha x DPO on a hidden-state logit (align methods, trust region)",
    "prefvec": "separation along the reference preference direction (+ orth/angle, DPO)",
    "mse": "circuit-breaker reroute/retain on log-distance ratios",
    "rank": "per-dimension DPO on log-softmaxed hidden states (+ relu(-rho) retain)",
    "topk": "widen separation in the k dims of largest reference difference",
}

for _loss in REPR_LOSSES:
    register_method(_loss, _SUMMARY.get(_loss, ""))(
        lambda opts, _n=_loss: ReprMethod(_n, opts))
register_method("projgrad", "DPO, adapter gradients projected on the preference direction")(
    lambda opts: ProjectionMethod("projgrad", opts))
register_method("projbp", "DPO, activation gradients projected on the preference direction")(
    lambda opts: ProjectionMethod("projbp", opts))
