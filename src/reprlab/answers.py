"""Does a causal LM give the known answer? Greedy exact match, checked teacher-forced.

Greedy decoding after ``prompt`` reproduces ``answer`` exactly when, at every answer token,
the arg-max given the prompt and the answer so far is that token; one forward pass per batch
checks it without generating. Used by ``probe --answers`` (what the model says beside what a
probe reads) and ``steer validate --answers`` (answer accuracy under steering).

Prompts are used as they are (a labeled dataset's texts: render any chat template into them)
or, with ``chat=True``, as one user message under the tokenizer's chat template (preference
prompts, as preference training renders them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reprlab.errors import ConfigError, DataError


def known_answers(ds: Any) -> tuple[list[str], list[str], bool]:
    """``(prompts, answers, chat)`` of a dataset with known answers: a labeled dataset with
    ``answers`` (its texts are the prompts) or preference triples (prompt, chosen)."""
    if getattr(ds, "answers", None) is not None:
        return list(ds.texts), list(ds.answers), False
    if hasattr(ds, "chosen"):
        return list(ds.prompt), list(ds.chosen), True
    raise DataError(f"dataset '{getattr(ds, 'name', '') or 'unnamed'}' has no known answers: "
                    "give a labeled dataset with an 'answer' column (the right continuation of "
                    "each text) or preference triples (prompt, chosen)")


def load_known(spec: str, limit: int | None = None) -> Any:
    """Load ``spec`` as a labeled dataset with answers, else as preference triples; one clear
    line when it is neither."""
    from reprlab.data import load_dataset

    try:
        ds = load_dataset(spec, kind="labeled", limit=limit)
    except DataError:
        ds = None
    if ds is None or ds.answers is None:
        try:
            ds = load_dataset(spec, kind="preferences", limit=limit)
        except DataError:
            pass
    known_answers(ds)
    return ds


def encode(lm: Any, prompts: Sequence[str], answers: Sequence[str],
           chat: bool = False) -> list[tuple[list[int], int]]:
    """Per row ``(ids of prompt + " " + answer, index of the first answer token)``."""
    tok = lm.tokenizer
    if chat and not getattr(tok, "chat_template", None):
        raise ConfigError(f"{lm.name} has no chat template to render the prompts with")
    rows = []
    for p, a in zip(prompts, answers, strict=True):
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}],
                                           add_generation_prompt=True, tokenize=False)
            p_ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            p_ids = tok(p)["input_ids"]
        a_ids = tok(" " + a.strip(), add_special_tokens=False)["input_ids"]
        rows.append((list(p_ids) + list(a_ids), len(p_ids)))
    return rows


@torch.no_grad()
def correct(lm: Any, rows: Sequence[tuple[list[int], int]], batch_size: int = 32) -> torch.Tensor:
    """``[n]`` bool: greedy decoding after each prompt reproduces its answer."""
    if not lm.is_causal:
        raise ConfigError(f"{lm.name} is not a causal LM; answer accuracy needs one")
    pad = lm.tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        t = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), t), dtype=torch.long)
        for k, (r, _) in enumerate(chunk):
            ids[k, :len(r)] = torch.tensor(r)
            mask[k, :len(r)] = 1
        logits = lm.model(input_ids=ids.to(lm.device),
                          attention_mask=mask.to(lm.device)).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        for k, (r, start) in enumerate(chunk):
            out.append(bool((pred[k, start - 1:len(r) - 1] == ids[k, start:len(r)]).all()))
    return torch.tensor(out, dtype=torch.bool)


def answer_correct(lm: Any, prompts: Sequence[str], answers: Sequence[str], *,
                   chat: bool = False, batch_size: int = 32) -> torch.Tensor:
    """``[n]`` bool: does ``lm`` answer each prompt with its known answer (greedy)?"""
    return correct(lm, encode(lm, prompts, answers, chat), batch_size)
