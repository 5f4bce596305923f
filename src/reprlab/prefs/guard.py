"""The coherence guard: did the policy win by falling apart?

Two checks on every evaluation. (1) The chosen-completion perplexity ratio, policy over base
model: DPO may lower chosen log-probs a little, but a model whose chosen perplexity rose many
fold (the research this tool serves reported ~500× for a claimed winner) has degenerated. A run
over ``threshold`` (default 3×) on any split is **incoherent**. (2) A short greedy generation on
held-out prompts: the fraction of answers that are well formed — they end with the end-of-turn
token within the budget, are not empty and do not repeat one token three times in a row — and the
fraction that equal the chosen completion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reprlab.models import LoadedModel
from reprlab.prefs.tokenize import encode_prompt

DEFAULT_THRESHOLD = 3.0


def perplexity_ratio(sum_on: torch.Tensor, sum_off: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """exp(mean NLL with the adapter) / exp(mean NLL without), token-weighted over rows."""
    n = n_tokens.sum().clamp(min=1).double()
    return float(torch.exp((sum_off.double().sum() - sum_on.double().sum()) / n))


def is_incoherent(ratios: dict[str, float], threshold: float = DEFAULT_THRESHOLD) -> bool:
    return any(math.isfinite(r) and r > threshold or not math.isfinite(r) for r in ratios.values())


@dataclass(frozen=True)
class GenerationCheck:
    n: int
    well_formed: float
    matches_chosen: float
    examples: tuple[tuple[str, str], ...]


def _degenerate(ids: list[int]) -> bool:
    return any(ids[i] == ids[i + 1] == ids[i + 2] for i in range(len(ids) - 2))


def generation_check(lm: LoadedModel, prompts: list[str], chosen: list[str], end_ids: set[int],
                     *, raw_text: bool, max_new_tokens: int = 12) -> GenerationCheck:
    """Greedy answers to ``prompts`` (one at a time, the adapter as it is now)."""
    tok = lm.tokenizer
    ok = match = 0
    examples = []
    was = lm.model.training
    lm.model.eval()
    try:
        for prompt, want in zip(prompts, chosen, strict=True):
            ids = torch.tensor([encode_prompt(tok, prompt, raw_text)], device=lm.device)
            with torch.no_grad():
                out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        eos_token_id=sorted(end_ids) or None,
                                        pad_token_id=tok.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            ended = bool(new) and new[-1] in end_ids
            body = new[:-1] if ended else new
            text = tok.decode(body, skip_special_tokens=True).strip()
            good = ended and bool(text) and not _degenerate(body)
            ok += good
            match += good and " ".join(text.split()) == " ".join(want.split())
            if len(examples) < 5:
                examples.append((prompt, text))
    finally:
        lm.model.train(was)
    n = max(1, len(prompts))
    return GenerationCheck(len(prompts), ok / n, match / n, tuple(examples))
