"""The logit lens: read a hidden state through the model's own final norm and unembedding."""

from __future__ import annotations

from typing import Any

import torch

from reprlab.lenses.base import Lens, register
from reprlab.lenses.unembed import decoder_parts, forward_states, layer_names, unembed
from reprlab.models import LoadedModel
from reprlab.positions import check_token_position


def model_summary(lm: LoadedModel) -> dict[str, Any]:
    ident = lm.identity()
    return {"name": lm.name, "source": lm.source, "config_hash": ident["config_hash"],
            "weights_fingerprint": ident["weights_fingerprint"],
            "n_layers": lm.arch.n_layers, "hidden_size": lm.arch.hidden_size}


@register
class LogitLens(Lens):
    """No parameters: layer ``l``'s reading is ``unembed(final_norm(h_l))``.

    Layers are indexed like :func:`reprlab.lenses.unembed.residual_sites`: 0 is the embedding
    output, ``l`` the output of block ``l - 1``; the last is the model's own output.
    """

    kind = "logit"

    @classmethod
    def fit(cls, lm: LoadedModel) -> LogitLens:
        decoder_parts(lm)  # refuses models without an unembedding
        return cls({}, {"model": model_summary(lm), "layers": layer_names(lm)})

    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return h

    def logits(self, lm: LoadedModel, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h [..., d]`` at residual index ``layer`` -> logits ``[..., V]``."""
        return unembed(lm, self.transform(h, layer))

    def all_logits(self, lm: LoadedModel, inputs: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward: this lens's logits at every layer ``[B, T, V]`` and the model's own."""
        states, final = forward_states(lm, inputs)
        with torch.no_grad():
            return [self.logits(lm, h, i) for i, h in enumerate(states)], final


def top_tokens(lm: LoadedModel, lens: LogitLens, text: str, k: int = 5,
               position: int = -1) -> list[dict[str, Any]]:
    """Rows ``{layer, tokens: [(token, prob)...]}`` at one token position of ``text``."""
    inputs = lm.encode([text])
    per_layer, _ = lens.all_logits(lm, inputs)
    mask = inputs["attention_mask"][0]
    check_token_position(position, [int(mask.sum())])
    idx = torch.nonzero(mask).flatten()[position].item()
    rows = []
    names = lens.config.get("layers") or layer_names(lm)
    for name, logits in zip(names, per_layer):
        probs = logits[0, idx].float().softmax(-1)
        p, ids = probs.topk(min(k, probs.numel()))
        toks = [lm.tokenizer.decode([int(i)]).strip() or repr(lm.tokenizer.decode([int(i)]))
                for i in ids]
        rows.append({"layer": name, "tokens": list(zip(toks, p.tolist()))})
    return rows
