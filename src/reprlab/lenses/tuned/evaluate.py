"""Evaluate logit and tuned lenses layer by layer: KL to the model's output, cross-entropy of
the next token and entropy, in bits per token."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from reprlab.lenses.logit import LogitLens
from reprlab.lenses.metrics import LN2, cross_entropy_logits, entropy_logits, kl_logits
from reprlab.lenses.unembed import forward_states, layer_names
from reprlab.models import LoadedModel


def encode_batches(lm: LoadedModel, texts: list[str], batch_size: int,
                   max_length: int) -> list[dict]:
    """Right-padded input batches of ``texts`` in the given order."""
    return [lm.encode(texts[i:i + batch_size], padding_side="right", max_length=max_length)
            for i in range(0, len(texts), batch_size)]


def evaluate_lenses(lm: LoadedModel, lenses: dict[str, LogitLens], texts: list[str], *,
                    batch_size: int = 8, max_length: int = 128,
                    progress: bool = False) -> list[dict[str, Any]]:
    """Per layer and lens: KL(final ‖ lens), cross-entropy of the next token and entropy, in
    bits per token, averaged over every real token (CE over tokens that have a next token)."""
    names = layer_names(lm)
    sums: dict[tuple[str, int, str], float] = {}
    n_tok, n_ce = 0, 0
    final_ce = 0.0
    moved = {k: v.to(lm.device) for k, v in lenses.items()}
    for batch in tqdm(encode_batches(lm, texts, batch_size, max_length), desc="lens eval",
                      disable=not progress):
        states, final = forward_states(lm, batch)
        mask = batch["attention_mask"].bool()
        ids = batch["input_ids"]
        nxt = mask[:, 1:] & mask[:, :-1]
        n_tok += int(mask.sum())
        n_ce += int(nxt.sum())
        final_ce += float(cross_entropy_logits(final[:, :-1], ids[:, 1:])[nxt].sum())
        with torch.no_grad():
            for lname, lens in moved.items():
                for i, h in enumerate(states):
                    lg = lens.logits(lm, h, i)
                    vals = {"kl": kl_logits(final, lg)[mask].sum(),
                            "entropy": entropy_logits(lg)[mask].sum(),
                            "ce": cross_entropy_logits(lg[:, :-1], ids[:, 1:])[nxt].sum()}
                    for k, v in vals.items():
                        sums[(lname, i, k)] = sums.get((lname, i, k), 0.0) + float(v)
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"layer": name}
        for lname in lenses:
            row[f"{lname}_kl_bits"] = sums[(lname, i, "kl")] / n_tok / LN2
            row[f"{lname}_ce_bits"] = sums[(lname, i, "ce")] / max(1, n_ce) / LN2
            row[f"{lname}_entropy_bits"] = sums[(lname, i, "entropy")] / n_tok / LN2
        row["model_ce_bits"] = final_ce / max(1, n_ce) / LN2
        rows.append(row)
    return rows
