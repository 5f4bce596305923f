"""Train a representation preference method with the site grammar resolved on the model.

The preference trainer records a method's sites by name; this entry point loads the model
first, resolves the site spec (``layers.0.5:-1`` = half depth to the second-to-last block,
ranges, negative indices) to concrete names, and then runs the trainer::

    reprlab.prefs.repr_train.train("toy-sft", "builtin:toy-prefs", method="innerdpo",
                                   sites="layers.0.5:-1", align="pars_ratio",
                                   transform="none", out="runs/inner", steps=50)

Loss and transform options may be given as keywords (``align=``, ``alpha=``,
``trust_region=``, ``k=``...) or in ``method_options``; trainer options (``steps``, ``lr``,
``seed``...) pass through to :func:`reprlab.prefs.trainer.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reprlab.distributed import rank_device
from reprlab.errors import ConfigError
from reprlab.models import as_loaded
from reprlab.prefs.config import TrainConfig
from reprlab.prefs.hidden import DEFAULT_SITES, resolve_repr_sites
from reprlab.prefs.repr_losses import REPR_LOSSES, option_names

PROJECTION_METHODS = ("projgrad", "projbp")


def method_options(lm: Any, method: str, sites: str | None = None, transform: str | None = None,
                   ref_cache: str = "auto", **loss_options: Any) -> dict[str, Any]:
    """The ``method_options`` of a run of ``method`` on ``lm``, with sites resolved to names."""
    opts = {k: v for k, v in loss_options.items() if v is not None}
    if method in PROJECTION_METHODS:
        if sites is not None or transform is not None:
            raise ConfigError(f"{method} projects adapter gradients; it takes no sites or "
                              "transform")
        return opts
    if method not in REPR_LOSSES:
        raise ConfigError(f"unknown representation method {method!r}; use one of "
                          f"{', '.join([*REPR_LOSSES, *PROJECTION_METHODS])}")
    names = [s.name for s in resolve_repr_sites(lm, sites or DEFAULT_SITES)]
    opts["sites"] = ",".join(names)
    side = opts.get("side")
    if side not in (None, False, "false"):
        kinds = {"attn": ("attn",), "mlp": ("mlp",)}.get(str(side), ("attn", "mlp"))
        side_list = resolve_repr_sites(lm, opts["sites"], side=True)
        for site in side_list:
            width = _in_width(lm.model.get_submodule(site.module_path))
            if (site.name.split(".")[2] in kinds and width != lm.arch.hidden_size
                    and ref_cache != "off"):
                raise ConfigError(
                    f"{site.name} has width {width}, not the model width "
                    f"{lm.arch.hidden_size} that the reference cache stores; use "
                    "ref_cache='off' or side='attn'")
    if transform is not None:
        opts["transform"] = transform
    valid = set(option_names(method)) | {"sites", "transform", "transform_lr", "side",
                                         "drop_sinks", "sink_sigma"}
    bad = [k for k in opts if k not in valid and not k.startswith("transform_")]
    if bad:
        raise ConfigError(f"option {', '.join(bad)} does not apply to the {method} loss; its "
                          f"options are {', '.join(sorted(valid))}")
    return opts


def _in_width(module: Any) -> int:
    w = getattr(module, "in_features", None) or getattr(module, "nx", None)
    if w is None:
        w = module.weight.shape[0 if type(module).__name__ == "Conv1D" else 1]
    return int(w)


def train(model: Any = None, data: Any = None, *, out: str | Path, method: str = "innerdpo",
          sites: str | None = None, transform: str | None = None,
          method_options_: dict[str, Any] | None = None, **options: Any) -> Any:
    """Resolve sites on the model, then :func:`reprlab.prefs.trainer.train` the method."""
    from reprlab.prefs.trainer import train as _train

    trainer_keys = {f for f in TrainConfig.__dataclass_fields__} | {"on_step", "config"}
    loss_kw = {k: options.pop(k) for k in list(options) if k not in trainer_keys}
    extra = dict(options.pop("method_options", None) or method_options_ or {})
    extra.update(loss_kw)
    lm = as_loaded(model if model is not None else TrainConfig.model,
                   device=rank_device(options.get("device", "cpu")),
                   dtype=options.get("model_dtype", "float32"))
    mo = method_options(lm, method, sites=sites, transform=transform,
                        ref_cache=str(options.get("ref_cache", "auto")), **extra)
    return _train(lm, data, out=out, method=method, method_options=mo, **options)
