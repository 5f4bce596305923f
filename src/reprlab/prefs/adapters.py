"""PEFT tuners by name: LoRA (with rsLoRA / DoRA), OFT, BOFT, HRA, IA3.

The adapter is injected into the model in place (``peft.get_peft_model``), so sites and hooks
keep their paths, and the reference is the same model with the adapter disabled — never a
second copy. Configuration pitfalls handled here: OFT's ``r`` and ``oft_block_size`` are
exclusive (we pass ``oft_block_size=0``); HRA with ``apply_GS=True`` and the default init gives
NaN gradients (we use ``init_weights=False`` there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from reprlab.errors import ConfigError


@dataclass(frozen=True)
class AdapterSpec:
    """Which tuner, on which modules, of which size."""

    kind: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    rslora: bool = False
    dora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _targets(spec: AdapterSpec) -> Any:
    return "all-linear" if list(spec.targets) == ["all-linear"] else list(spec.targets)


def _lora(spec: AdapterSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=_targets(spec), use_rslora=spec.rslora, use_dora=spec.dora,
                      **spec.extra)


def _oft(spec: AdapterSpec) -> Any:
    from peft import OFTConfig

    return OFTConfig(r=spec.r, oft_block_size=0, target_modules=_targets(spec), **spec.extra)


def _boft(spec: AdapterSpec) -> Any:
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=spec.r, boft_block_num=0, target_modules=_targets(spec),
                      **spec.extra)


def _hra(spec: AdapterSpec) -> Any:
    from peft import HRAConfig

    extra = dict(spec.extra)
    if extra.get("apply_GS"):
        extra.setdefault("init_weights", False)
    return HRAConfig(r=spec.r, target_modules=_targets(spec), **extra)


def _ia3(spec: AdapterSpec) -> Any:
    from peft import IA3Config

    return IA3Config(target_modules=_targets(spec), feedforward_modules=[], **spec.extra)


TUNERS: dict[str, Callable[[AdapterSpec], Any]] = {
    "lora": _lora, "oft": _oft, "boft": _boft, "hra": _hra, "ia3": _ia3,
}


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear)})


def apply_adapter(model: nn.Module, spec: AdapterSpec) -> Any:
    """Inject the adapter into ``model`` in place; returns the ``PeftModel`` wrapper."""
    from peft import get_peft_model

    if spec.kind not in TUNERS:
        raise ConfigError(f"unknown --adapter {spec.kind!r}; use one of {', '.join(TUNERS)}")
    if spec.r < 1:
        raise ConfigError(f"--lora-r must be at least 1, got {spec.r}")
    names = _linear_names(model)
    if _targets(spec) != "all-linear":
        missing = [t for t in spec.targets
                   if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
        if len(missing) == len(spec.targets):
            raise ConfigError(f"--lora-targets {','.join(spec.targets)} match no module of this "
                              f"model; its linear layers are {', '.join(names)} (or all-linear)")
    try:
        peft_model = get_peft_model(model, TUNERS[spec.kind](spec))
    except (ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot apply a {spec.kind} adapter ({first}); linear layers of this "
                          f"model: {', '.join(names)}") from None
    return peft_model


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
