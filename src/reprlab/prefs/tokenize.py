"""Tokenise preference triples so that the prompt is a true prefix of prompt + completion.

With a chat template the prompt is rendered as one user message with the generation prompt
(exactly what the model sees when it answers), the completion as what the template appends for
the assistant reply, including its end-of-turn token. Prompt and completion are tokenised
separately and concatenated, so no token merges across the boundary and the prompt ids are the
ones used at inference. Without a template (``raw_text=True``) the prompt is BOS + prompt text
and the completion is the completion text + EOS.

Completion mask: 1 on completion tokens that are scored; the prompt, padding and special tokens
inside the completion are 0, except the final token (the end-of-turn / EOS that teaches the
model to stop).

Truncation policy (``max_length`` tokens for prompt + completion):

1. a prompt longer than ``max_prompt_length`` (when set) is cut **from the left** (the end of
   the prompt, next to the answer, is kept);
2. a completion that does not fit is cut **from the right**;
3. a row whose prompt alone fills ``max_length`` is dropped (nothing of the answer would be
   scored), and so is a row whose chosen and rejected completions become identical.

Every cut and drop is counted in :class:`TruncationReport`; the trainer logs it and writes it
to ``results.json``. (With ``max_prompt_length=None`` this is TRL 1.16's ``keep_start``.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

from reprlab.data import PreferenceTriples
from reprlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TruncationReport:
    """How many rows were cut or dropped, and under which policy."""

    rows: int
    kept: int
    prompt_truncated: int
    completion_truncated: int
    dropped_prompt_too_long: int
    dropped_identical: int
    max_length: int
    max_prompt_length: int | None
    policy: str = "prompt cut from the left, completion from the right"

    def summary(self) -> str:
        return (f"{self.kept}/{self.rows} rows kept; {self.prompt_truncated} prompts cut from the "
                f"left, {self.completion_truncated} rows with a completion cut from the right, "
                f"{self.dropped_prompt_too_long} dropped (prompt >= {self.max_length} tokens), "
                f"{self.dropped_identical} dropped (chosen = rejected after cutting)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenizedPrefs:
    """Token ids of the kept rows. ``*_mask`` marks scored completion tokens (1) per token."""

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    chosen_mask: list[list[int]]
    rejected_mask: list[list[int]]
    ids: list[str]
    pad_id: int
    report: TruncationReport
    template: str  # "chat" or "raw"
    prompts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def hash(self) -> str:
        """SHA-256 over every token id and mask: what the reference cache is keyed on."""
        blob = json.dumps([self.prompt_ids, self.chosen_ids, self.rejected_ids,
                           self.chosen_mask, self.rejected_mask], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def n_tokens(self, rows: list[int]) -> int:
        return sum(len(self.prompt_ids[i]) * 2 + len(self.chosen_ids[i]) + len(self.rejected_ids[i])
                   for i in rows)


_warned: list[bool] = []


def has_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _special_ids(tok: Any) -> set[int]:
    return set(getattr(tok, "all_special_ids", []) or [])


def render(tok: Any, prompt: str, completion: str | None, raw_text: bool) -> tuple[str, str]:
    """(prompt text, completion text) as the model reads them."""
    if raw_text:
        return prompt, completion or ""
    user = [{"role": "user", "content": prompt}]
    p = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    if completion is None:
        return p, ""
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": completion}],
                                   tokenize=False)
    if not full.startswith(p):
        # the template renders the prompt alone differently: keep the common text prefix
        k = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
        if not _warned:
            _warned.append(True)
            logger.warning("the chat template renders the prompt differently when a reply "
                           "follows; the completion starts where the two renderings diverge")
        return full[:k], full[k:]
    return p, full[len(p):]


def encode_prompt(tok: Any, prompt: str, raw_text: bool) -> list[int]:
    """Token ids of a prompt exactly as training and generation read it."""
    text, _ = render(tok, prompt, None, raw_text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if raw_text and tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    return ids


def _encode_completion(tok: Any, text: str, raw_text: bool) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if raw_text and tok.eos_token_id is not None:
        ids = ids + [tok.eos_token_id]
    return ids


def _mask(ids: list[int], special: set[int]) -> list[int]:
    return [0 if (t in special and j != len(ids) - 1) else 1 for j, t in enumerate(ids)]


def tokenize_prefs(tok: Any, data: PreferenceTriples, *, max_length: int = 512,
                   max_prompt_length: int | None = None, raw_text: bool = False,
                   model_name: str = "") -> TokenizedPrefs:
    """Tokenise ``data`` (see the module docstring for the masking and truncation policy)."""
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {max_length}")
    if max_prompt_length is not None and not 0 < max_prompt_length < max_length:
        raise ConfigError(f"--max-prompt-length must be between 1 and --max-length - 1 "
                          f"({max_length - 1}), got {max_prompt_length}")
    if not raw_text and not has_chat_template(tok):
        raise ConfigError(f"the tokenizer of {model_name or 'this model'} has no chat template, "
                          "so an SFT model would read prompts unlike in training; set "
                          "tokenizer.chat_template, or pass --raw-text to train on plain text")
    if tok.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token")
    special = _special_ids(tok)
    out: dict[str, list] = {k: [] for k in ("p", "c", "r", "cm", "rm", "ids", "text")}
    counts = {"prompt": 0, "completion": 0, "long": 0, "same": 0}
    longest = 0
    for i in range(len(data)):
        p_text, c_text = render(tok, data.prompt[i], data.chosen[i], raw_text)
        _, r_text = render(tok, data.prompt[i], data.rejected[i], raw_text)
        p = tok(p_text, add_special_tokens=False)["input_ids"]
        if raw_text and tok.bos_token_id is not None:
            p = [tok.bos_token_id] + p
        c = _encode_completion(tok, c_text, raw_text)
        r = _encode_completion(tok, r_text, raw_text)
        longest = max(longest, len(p))
        if max_prompt_length is not None and len(p) > max_prompt_length:
            p = p[len(p) - max_prompt_length:]
            counts["prompt"] += 1
        if len(p) >= max_length:
            counts["long"] += 1
            continue
        room = max_length - len(p)
        if len(c) > room or len(r) > room:
            counts["completion"] += 1
            c, r = c[:room], r[:room]
        if c == r:
            counts["same"] += 1
            continue
        out["p"].append(p)
        out["c"].append(c)
        out["r"].append(r)
        out["cm"].append(_mask(c, special))
        out["rm"].append(_mask(r, special))
        out["ids"].append(data.ids[i])
        out["text"].append(data.prompt[i])
    report = TruncationReport(len(data), len(out["ids"]), counts["prompt"], counts["completion"],
                              counts["long"], counts["same"], max_length, max_prompt_length)
    if not out["ids"]:
        if counts["long"] == len(data):
            raise DataError(f"every prompt of '{data.name}' is at least --max-length {max_length} "
                            f"tokens (longest {longest}): raise --max-length or set "
                            "--max-prompt-length to cut prompts from the left")
        raise DataError(f"no row of '{data.name}' is usable after tokenisation ({report.summary()})")
    if report.kept < report.rows or report.prompt_truncated or report.completion_truncated:
        logger.warning("%s: %s", data.name or "preferences", report.summary())
    return TokenizedPrefs(out["p"], out["c"], out["r"], out["cm"], out["rm"], out["ids"],
                          int(tok.pad_token_id), report, "raw" if raw_text else "chat",
                          tuple(out["text"]))


def collate(tokens: TokenizedPrefs, rows: list[int], device: torch.device | str = "cpu",
            pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """A batch of ``rows``: chosen sequences first, then rejected, right-padded.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each ``[2B, T]``.
    """
    seqs, masks = [], []
    for side in ("c", "r"):
        for i in rows:
            comp = tokens.chosen_ids[i] if side == "c" else tokens.rejected_ids[i]
            cm = tokens.chosen_mask[i] if side == "c" else tokens.rejected_mask[i]
            seqs.append(tokens.prompt_ids[i] + comp)
            masks.append([0] * len(tokens.prompt_ids[i]) + cm)
    t = max(len(s) for s in seqs)
    t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(seqs), t), tokens.pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    comp = torch.zeros((len(seqs), t), dtype=torch.long)
    for j, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        ids[j, : len(s)] = torch.tensor(s)
        att[j, : len(s)] = 1
        comp[j, : len(m)] = torch.tensor(m)
    return {"input_ids": ids.to(device), "attention_mask": att.to(device),
            "completion_mask": comp.to(device)}
