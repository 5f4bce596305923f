"""Reading an activation at a site and splicing one back: the target model's next-token
logits with a vector written at the site (a full forward, or the prefix's KV cache and one
more token)."""

from __future__ import annotations

import torch

from reprlab import hooks
from reprlab.models import LoadedModel
from reprlab.positions import check_token_position
from reprlab.sites import Site


def read_activation(lm: LoadedModel, site: Site, texts: list[str], position: int = -1
                    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Activations ``[B, d]`` at the ``position``-th real token, the inputs and the indices."""
    inputs = lm.encode(texts, padding_side="right")
    mask = inputs["attention_mask"]
    n = mask.sum(1)
    check_token_position(position, n.tolist())
    idx = torch.where(torch.tensor(position) < 0, n + position, torch.full_like(n, position))
    idx = idx.clamp(min=0).minimum(n - 1)
    with torch.no_grad(), hooks.record(lm, [site]) as cache:
        lm.model(**inputs)
    h = cache[site.name]
    return h[torch.arange(h.shape[0]), idx].float(), inputs, idx


def target_logits(lm: LoadedModel, site: Site, inputs: dict, pos: torch.Tensor,
                  splice: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits ``[B, V]`` at ``pos``, with ``splice [B, d]`` written at the site."""
    rows = torch.arange(pos.shape[0], device=pos.device)

    def fn(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[rows, pos] = splice.to(h.dtype)
        return out

    if splice is None:
        with torch.no_grad():
            logits = lm.model(**inputs).logits
    else:
        with hooks.edit(lm, {site: fn}):
            logits = lm.model(**inputs).logits
    return logits[rows, pos].float()


def _cache_arg(model: torch.nn.Module) -> str | None:
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def splice_logits(lm: LoadedModel, site: Site, ids: torch.Tensor, pos: torch.Tensor,
                  splice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits ``[B, V]`` at ``pos`` of right-padded ``ids [B, T]``: the model's
    own, and with ``splice [B, d]`` written at the site there.

    The contexts are left-aligned so each sampled position is the last column; one no-grad
    forward gives the original logits and the KV cache of the prefix, and only the last token
    runs again with the splice (the positions before it cannot see it). The gradient to the
    splice therefore flows through one token, not the whole context.
    """
    dev = lm.device
    b = pos.shape[0]
    width = int(pos.max()) + 1
    arg = _cache_arg(lm.model)
    if width < 2 or arg is None:
        inputs = lm.forward_inputs({"input_ids": ids[:, :width],
                                    "attention_mask": ids.new_ones((b, width))})
        orig = target_logits(lm, site, inputs, pos.to(dev))
        return orig, target_logits(lm, site, inputs, pos.to(dev), splice)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ctx = torch.full((b, width), int(pad), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r in range(b):
        p = int(pos[r]) + 1
        ctx[r, width - p:] = ids[r, :p]
        mask[r, width - p:] = 1
    ctx, mask = ctx.to(dev), mask.to(dev)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = lm.model(input_ids=ctx, attention_mask=mask, position_ids=position_ids,
                       use_cache=True)
        cache = out.get("cache", out.get("past_key_values"))
        cache.crop(-1)  # drop the last position: it runs again with the splice

    def fn(h: torch.Tensor) -> torch.Tensor:
        new = h.clone()
        new[:, -1] = splice.to(h.dtype)
        return new

    with hooks.edit(lm, {site: fn}):
        rec = lm.model(input_ids=ctx[:, -1:], attention_mask=mask,
                       position_ids=position_ids[:, -1:], use_cache=True, **{arg: cache})
    return out.logits[:, -1].float(), rec.logits[:, -1].float()
