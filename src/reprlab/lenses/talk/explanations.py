"""Warm-start explanations for the ``nla`` recipe, one row of ``t`` token ids per sample of a
dump: the top tokens that a tuned (or logit) lens reads from the activation itself, or a
user's file of explanations (e.g. written by a larger model). Never the toy world's answers:
the lens only ever sees what another lens or a person wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ConfigError, DataError
from reprlab.lenses.talk.data import LensData, special_ids
from reprlab.lenses.unembed import unembed
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites


def residual_index(lm: LoadedModel, site_name: str) -> int:
    """The lens layer index of a residual site: 0 for ``embed``, ``l + 1`` for ``layers.l``."""
    site = resolve_sites(lm, site_name)[0]
    return 0 if site.kind == "embed" else (site.layer or 0) + 1


def top_token_ids(logits: torch.Tensor, t: int, banned: set[int]) -> torch.Tensor:
    """The ``t`` most likely distinct tokens of each row of ``logits [N, V]``, most likely
    first, never a ``banned`` id -> ``[N, t]``."""
    x = logits.float().clone()
    if banned:
        x[:, torch.tensor(sorted(banned), dtype=torch.long)] = float("-inf")
    return x.topk(t, dim=-1).indices


def lens_explanations(lm: LoadedModel, lens: Any, data: LensData, t: int,
                      batch_size: int = 256) -> torch.Tensor:
    """Each sample's explanation ``[N, t]``: the top ``t`` tokens the lens (tuned or logit)
    reads from its activation, special tokens left out."""
    layer = residual_index(lm, data.site)
    banned = special_ids(lm.tokenizer)
    out = []
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            a = data.a[s:s + batch_size].to(lm.device)
            h = lens.transform(a, layer) if lens is not None else a
            out.append(top_token_ids(unembed(lm, h.to(lm.dtype)), t, banned).cpu())
    return torch.cat(out)


def with_context(data: LensData, explanations: torch.Tensor, k: int,
                 quote_last: bool = False) -> torch.Tensor:
    """``explanations [N, t]`` with ``k`` slots given to the last ``k`` tokens of each
    sample's text, in text order, and the first ``t - k`` of their own tokens beside them: a
    warm start that states the context and spends the other slots on what the lens reads
    (what the context-echo baseline cannot say). The quote comes first, or last with
    ``quote_last`` (for a decoder whose first token is the model's own prediction)."""
    if k == 0:
        return explanations
    from reprlab.lenses.talk.evaluate import original_tokens

    ctx = original_tokens(data, torch.arange(len(data)), k)
    own = explanations[:, :explanations.shape[1] - k]
    return torch.cat([own, ctx] if quote_last else [ctx, own], dim=1)


def read_explanation_texts(path: str | Path) -> list[str]:
    """Explanations from a ``.txt`` (one a line) or ``.jsonl`` file (an ``explanation``
    field a line)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"no explanations file {p}; give a .txt (one explanation a line) or "
                        ".jsonl ({\"explanation\": ...} a line)")
    lines = p.read_text().splitlines()
    if p.suffix == ".jsonl":
        texts = []
        for k, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                texts.append(str(json.loads(ln)["explanation"]))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{p} line {k} is not a JSON object with an \"explanation\" "
                                "field") from None
        return texts
    return [ln.strip() for ln in lines if ln.strip()]


def file_explanations(path: str | Path, tokenizer: Any, n: int, t: int) -> torch.Tensor:
    """Token ids ``[n, t]`` of a file's explanations, one per sample in the dump's order (cut
    to ``t`` tokens; shorter ones padded with the end-of-sequence token)."""
    texts = read_explanation_texts(path)
    if len(texts) != n:
        raise ConfigError(f"{path} holds {len(texts)} explanations but the activations have "
                          f"{n} samples; give one explanation per sample, in the dump's order")
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (
        tokenizer.pad_token_id or 0)
    out = torch.full((n, t), int(pad), dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:t]
        if ids:
            out[i, :len(ids)] = torch.tensor(ids)
    return out
