"""The talkative lens's text prompts: the decoder prompt with its ``<embed>`` slot, the
encoder prompt, and which block of the residual stream a site is."""

from __future__ import annotations

from typing import Any

from reprlab.errors import ConfigError
from reprlab.sites import Site

MARKER = "<embed>"


def prompt_ids(tokenizer: Any, prompt: str) -> tuple[list[int], int]:
    """Token ids of a decoder prompt with one ``<embed>`` slot, and the slot's index."""
    if prompt.count(MARKER) != 1:
        raise ConfigError(f"the decoder prompt needs exactly one {MARKER} marker, got {prompt!r}")
    before, after = prompt.split(MARKER)
    ids: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids.append(int(bos))
    ids += tokenizer(before, add_special_tokens=False)["input_ids"] if before.strip() else []
    marker = len(ids)
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    ids.append(int(unk))  # placeholder: replaced by the projected activation
    ids += tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    return [int(i) for i in ids], marker


def encoder_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids.append(int(bos))
    if prompt.strip():
        ids += tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def site_layer(site: Site) -> int:
    if site.kind not in ("block", "embed"):
        raise ConfigError(f"the talkative lens reads the residual stream: use embed or "
                          f"layers.N, not {site.name}")
    return max(0, site.layer or 0)
