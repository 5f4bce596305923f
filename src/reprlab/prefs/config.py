"""The typed configuration of a preference-training run (shared by the Python API and CLI)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError

#: fields that do not change the numbers of a run (excluded from the resume check)
NON_NUMERIC = ("out", "progress", "save_every", "ref_cache", "validate", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a preference-training run."""

    model: str = "toy-sft"
    data: str = "builtin:toy-prefs"
    method: str = "dpo"
    method_options: dict[str, Any] = field(default_factory=dict)
    beta: float = 0.1
    label_smoothing: float | None = None
    aggregation: str = "sum"
    nll_weight: float | None = None
    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    rslora: bool = False
    dora: bool = False
    adapter_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    steps: int = 0
    epochs: float = 4.0
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "cpu"
    model_dtype: str = "float32"
    max_length: int = 512
    max_prompt_length: int | None = None
    raw_text: bool = False
    limit: int | None = None
    ref_cache: str = "auto"
    save_every: int = 50
    prompt_col: str = "prompt"
    chosen_col: str = "chosen"
    rejected_col: str = "rejected"
    out: str = "runs/prefs"
    progress: bool = True
    #: name -> preference data scored once training ends (``results.json`` "validation"), the
    #: objective a sweep chooses settings on; names starting "control" only check coherence
    validate: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from reprlab.cliutil import finite_fields

        finite_fields(self)
        checks = [
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (self.steps >= 0, f"--steps must be 0 (use --epochs) or more, got {self.steps}"),
            (self.epochs > 0, f"--epochs must be positive, got {self.epochs}"),
            (self.warmup_steps >= 0, f"--warmup-steps must be 0 or more, got {self.warmup_steps}"),
            (self.max_grad_norm > 0, f"--max-grad-norm must be positive, got {self.max_grad_norm}"),
            (self.save_every >= 1, f"--save-every must be at least 1, got {self.save_every}"),
            (self.lora_r >= 1, f"--lora-r must be at least 1, got {self.lora_r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.ref_cache not in ("auto", "off") and Path(self.ref_cache).exists() \
                and not Path(self.ref_cache).is_dir():
            raise ConfigError(f"--ref-cache {self.ref_cache} is a file; give a directory for "
                              "the reference cache, 'auto' or 'off'")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def numeric(self) -> dict[str, Any]:
        """The fields that shape the numbers (what a resumed run must share)."""
        d = asdict(self)
        for k in NON_NUMERIC:
            d.pop(k, None)
        d["lora_targets"] = list(d["lora_targets"])
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.numeric(), sort_keys=True, default=str)
                              .encode()).hexdigest()[:16]


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``["lr 0.001 -> 0.0001", ...]`` for keys whose values differ."""
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
