"""One forward over chosen and rejected sequences (stacked on the batch axis) -> SeqOutputs.

The backbone runs once on ``[2B, T]``; the LM head is applied only at the positions whose next
token is a scored completion token (not over the whole ``[2B, T, vocab]``), then log-softmax
and gather give the per-token log-probs, summed per sequence. Hidden states at requested sites
are recorded in-graph and mean-pooled over completion tokens.
"""

from __future__ import annotations

import torch

from reprlab import hooks
from reprlab.models import LoadedModel
from reprlab.positions import pool
from reprlab.prefs.methods import SeqOutputs


def _head_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    head = lm.model.get_output_embeddings()
    logits = head(hidden)
    cfg = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") \
        else lm.model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _mean_pool(site: str, h: torch.Tensor, att: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    return pool(h, att, "mean:span", comp)


def sequence_logps(lm: LoadedModel, batch: dict[str, torch.Tensor],
                   sites: tuple[str, ...] = (), pooler=None, recorder=None
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(sums [N], counts [N], pooled {site: [N, d]})`` for a collated batch of N sequences.

    ``pooler(site, hidden, attention_mask, completion_mask)`` reduces a site's states
    (default: mean over completion tokens); ``recorder(lm)`` is the context manager that
    records them (default: ``hooks.record(lm, sites, detach=False)``).
    """
    pooler = pooler or _mean_pool
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    backbone = lm.model.base_model
    if sites:
        record = recorder(lm) if recorder is not None else hooks.record(lm, list(sites),
                                                                         detach=False)
        with record as rec:
            hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        pooled = {s: pooler(s, rec[s], att, comp) for s in sites}
    else:
        hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        pooled = {}
    target = comp[:, 1:].bool()
    labels = ids[:, 1:][target]
    logits = _head_logits(lm, hidden[:, :-1][target])
    tok_lp = logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    rows = target.nonzero(as_tuple=True)[0]
    sums = torch.zeros(ids.shape[0], dtype=tok_lp.dtype, device=ids.device).index_add(0, rows, tok_lp)
    return sums, target.sum(1), pooled


def split(sums: torch.Tensor, counts: torch.Tensor, pooled: dict[str, torch.Tensor]) -> SeqOutputs:
    b = sums.shape[0] // 2
    return SeqOutputs(sums[:b], sums[b:], counts[:b], counts[b:],
                      {s: v[:b] for s, v in pooled.items()}, {s: v[b:] for s, v in pooled.items()})


def forward(lm: LoadedModel, batch: dict[str, torch.Tensor],
            sites: tuple[str, ...] = (), pooler=None, recorder=None) -> SeqOutputs:
    """Policy (or, under no_grad with the adapter off, reference) outputs of a batch."""
    return split(*sequence_logps(lm, batch, sites, pooler, recorder))
