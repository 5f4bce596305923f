"""Checkpoint discovery and validation: order by step number, refuse mixed inputs.

Checkpoint names such as ``step_100`` and ``step_50`` sort wrongly as strings; they are
ordered by the number in their name (the last integer, e.g. ``checkpoint-1200``,
``step_50``, ``ckpt-e3-step-400`` -> 400).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from reprlab.errors import ConfigError, DataError, ModelError

_NUM = re.compile(r"(\d+)")


def step_of(name: str | Path) -> int:
    """The step number of a checkpoint path: the last integer in its final name component."""
    base = Path(str(name).rstrip("/")).name
    base = re.sub(r"\.(safetensors|json|bin|pt|ckpt)$", "", base)
    nums = _NUM.findall(base)
    if not nums:
        raise ConfigError(f"cannot read a step number from checkpoint name {base!r}; "
                          "name checkpoints like step-100 or checkpoint-100")
    return int(nums[-1])


def order_checkpoints(paths: Iterable[str | Path]) -> list[tuple[int, Path]]:
    """``[(step, path)]`` sorted by step; refuses duplicate steps."""
    items = sorted(((step_of(p), Path(p)) for p in paths), key=lambda t: t[0])
    steps = [s for s, _ in items]
    dup = {s for s in steps if steps.count(s) > 1}
    if dup:
        raise ConfigError(f"several checkpoints share step {sorted(dup)[0]}; pass one per step")
    return items


def expand(patterns: Sequence[str] | str) -> list[tuple[int, Path]]:
    """Expand globs (``ckpts/step-*``) and comma-separated lists, then order by step."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    paths: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat.strip()))
        if not hits and Path(pat.strip()).exists():
            hits = [pat.strip()]
        paths.extend(hits)
    if len(paths) < 2:
        raise ConfigError(f"need at least two checkpoints, found {len(paths)} for "
                          f"{', '.join(patterns)}; check the paths or glob")
    return order_checkpoints(dict.fromkeys(paths))


_ARCH_KEYS = ("model_type", "hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer",
              "num_attention_heads", "n_head", "vocab_size", "intermediate_size")


def check_same_architecture(configs: Mapping[int, Mapping]) -> None:
    """Refuse checkpoints whose configs differ in architecture (``{step: config dict}``)."""
    items = list(configs.items())
    if not items:
        return
    ref_step, ref = items[0]
    for step, cfg in items[1:]:
        for k in _ARCH_KEYS:
            if k in ref or k in cfg:
                if ref.get(k) != cfg.get(k):
                    raise ModelError(
                        f"checkpoint at step {step} has a different architecture from step "
                        f"{ref_step} ({k}: {cfg.get(k)!r} vs {ref.get(k)!r}); compare "
                        "checkpoints of one training run")


def check_same_inputs(hashes: Mapping[int, str | None], what: str = "evaluation set") -> None:
    """Refuse when the evaluation data differs between checkpoints (``{step: hash}``)."""
    items = [(s, h) for s, h in hashes.items() if h is not None]
    if not items:
        return
    ref_step, ref = items[0]
    for step, h in items[1:]:
        if h != ref:
            raise DataError(f"the {what} at step {step} differs from the one at step "
                            f"{ref_step} (hash {h[:12]} vs {ref[:12]}); capture every "
                            "checkpoint on the same inputs")
