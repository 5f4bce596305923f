"""Generation from a causal LM with steering on, for several coefficients side by side."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from reprlab import _threads
from reprlab.errors import ConfigError, ModelError
from reprlab.steering.operators import parse_coeffs, steer

if TYPE_CHECKING:
    from reprlab.models import LoadedModel
    from reprlab.steering.vector import SteeringVector

logger = logging.getLogger(__name__)


def generate(lm: LoadedModel, vector: SteeringVector, prompts: str | Sequence[str],
             coeffs: Any = (-4.0, 0.0, 4.0), *, sites: Any = None, op: str = "add",
             unit: str = "unit", scope: str = "all", preserve_norm: bool = False,
             max_new_tokens: int = 40, sample: bool = False, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0, ignore_eos: bool = False,
             allow_other_model: bool = False, threads: int | None = None
             ) -> list[dict[str, Any]]:
    """Generate a continuation of each prompt at each coefficient.

    Greedy by default; ``sample=True`` samples with ``temperature``/``top_p`` from a generator
    seeded with ``seed`` before every coefficient, so runs are reproducible and each
    coefficient sees the same random stream. ``ignore_eos`` always generates
    ``max_new_tokens``. Returns one dict per (coefficient, prompt):
    ``{"coeff", "prompt", "completion", "token_ids"}``. ``threads``: torch threads (None:
    reprlab's policy, sized by the prompt batch's forward); the caller's count is restored.
    """
    if not lm.is_causal:
        raise ModelError(f"{lm.name} is not a causal language model; generation needs one "
                         "(validate encoders with readout shift instead)")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    vector.check_model(lm, strict=not allow_other_model)
    values = parse_coeffs(coeffs)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ConfigError("give at least one text prompt")
    batch = lm.encode(prompts, padding_side="left")
    width = batch["input_ids"].shape[1]
    tok = lm.tokenizer
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample,
                                  pad_token_id=tok.pad_token_id)
    if ignore_eos:
        kwargs["min_new_tokens"] = max_new_tokens
    if sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    rows: list[dict[str, Any]] = []
    for c in values:
        torch.manual_seed(seed)
        with steer(lm, vector, c, sites=sites, op=op, unit=unit, scope=scope,
                   preserve_norm=preserve_norm, check=False), torch.no_grad(), \
                _threads.for_forward(lm, batch["attention_mask"].numel(), threads):
            out = lm.model.generate(**batch, **kwargs)
        for p, seq in zip(prompts, out[:, width:], strict=True):
            ids = [int(t) for t in seq if int(t) != tok.pad_token_id]
            rows.append({"coeff": c, "prompt": p, "token_ids": ids,
                         "completion": tok.decode(ids, skip_special_tokens=True)})
    return rows
