"""The talkative (consistency) lens as a frozen artifact: build the decoder/encoder pair for a
target model, read an activation at a site, and explain it in words with a reconstruction."""

from __future__ import annotations

import copy
from typing import Any

import torch

from reprlab.errors import ConfigError, ModelError
from reprlab.lenses.base import Lens, register
from reprlab.lenses.metrics import LN2, kl_logits
from reprlab.lenses.talk.model import TalkModule
from reprlab.lenses.talk.splice import read_activation, target_logits
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites


def _base_copy(lm: LoadedModel, source: str | None) -> torch.nn.Module:
    if not source:
        return copy.deepcopy(lm.model)
    from reprlab.models import load_model

    other = load_model(source, causal=True)
    if not other.is_causal:
        raise ModelError(f"--decoder {source!r} is not a causal LM")
    return other.model


def build_module(lm: LoadedModel, spec: dict[str, Any]) -> TalkModule:
    """The decoder/encoder pair from a spec (see :meth:`TalkativeLens.spec`)."""
    decoder = _base_copy(lm, spec.get("decoder"))
    encoder = _base_copy(lm, spec.get("decoder"))
    return TalkModule(decoder, encoder, lm.arch.hidden_size, spec["prompt_ids"], spec["marker"],
                      spec["encoder_prompt_ids"], spec["encoder_layer"],
                      train_decoder=not spec.get("freeze_decoder", False),
                      train_encoder=not spec.get("freeze_encoder", False),
                      allow_rect=spec.get("rect_projection", False),
                      scale=spec.get("scale", 1.0),
                      inject=spec.get("inject")).to(lm.device)



@register
class TalkativeLens(Lens):
    """A trained decoder/encoder pair for one site of one model.

    ``tensors`` hold the pair's weights (``module.*``) and the dataset statistics ``a_mean``
    / ``a_var`` that FVE is measured against; ``config`` the spec to rebuild it. Loading needs
    the target model: ``load_lens(path, lm=lm)``.
    """

    kind = "talk"

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                 module: TalkModule | None = None, lm: LoadedModel | None = None):
        super().__init__(tensors, config)
        if module is None:
            if lm is None:
                raise ConfigError("loading a talkative lens needs its target model: "
                                  "load_lens(path, lm=load_model(...))")
            module = build_module(lm, config["spec"])
            state = {k[len("module."):]: v for k, v in self.tensors.items()
                     if k.startswith("module.")}
            module.load_state_dict(state, strict=True)
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module.eval()

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                   **kwargs: Any) -> TalkativeLens:
        return cls(tensors, config, lm=kwargs.get("lm"))

    @classmethod
    def from_module(cls, module: TalkModule, config: dict[str, Any], a_mean: torch.Tensor,
                    a_var: torch.Tensor) -> TalkativeLens:
        frozen = copy.deepcopy(module).cpu()
        tensors = {f"module.{k}": v for k, v in frozen.state_dict().items()}
        tensors["a_mean"], tensors["a_var"] = a_mean.detach().cpu(), a_var.detach().reshape(())
        return cls(tensors, config, module=frozen)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> TalkativeLens:
        module = copy.deepcopy(self.module).to(device=device, dtype=dtype)
        moved = {k: v.to(device=device) for k, v in self.tensors.items()}
        return TalkativeLens(moved, self.config, module=module)

    @property
    def site_name(self) -> str:
        return self.config["spec"]["site"]

    @property
    def tokens(self) -> int:
        return int(self.config["spec"]["tokens"])

    def reconstruct(self, a: torch.Tensor, noise: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, t], Â [B, d])`` for activations ``a [B, d]`` (greedy unless ``noise``)."""
        with torch.no_grad():
            gen = self.module.generate(a, self.tokens, 1.0, noise)
            return gen.ids, self.module.encode(gen.onehots)

    def explain(self, lm: LoadedModel, texts: list[str], position: int = -1, best_of: int = 1,
                seed: int = 0) -> list[dict[str, Any]]:
        """Words for the activation at ``position`` of each text, with FVE and KL (bits), and
        the model's own next token there (``next_token_id``)."""
        from reprlab.lenses.talk.model import gumbel_noise

        site = resolve_sites(lm, self.site_name)[0]
        a, inputs, pos = read_activation(lm, site, texts, position)
        ids, a_hat = self.reconstruct(a)
        mean = self.tensors["a_mean"].to(a)
        var_total = (a - mean).pow(2).sum(-1)
        err = (a_hat - a).pow(2).sum(-1)
        best_ids, best_err = ids.clone(), err.clone()
        vocab = self.module.decoder.get_input_embeddings().weight.shape[0]
        g = torch.Generator().manual_seed(seed)
        for _ in range(max(0, best_of - 1)):
            noise = gumbel_noise((a.shape[0], self.tokens, vocab), g).to(a.device)
            s_ids, s_hat = self.reconstruct(a, noise)
            s_err = (s_hat - a).pow(2).sum(-1)
            better = s_err < best_err
            best_ids[better], best_err[better] = s_ids[better], s_err[better]
        orig = target_logits(lm, site, inputs, pos)
        with torch.no_grad():
            rec = target_logits(lm, site, inputs, pos, a_hat)
        kl = kl_logits(orig, rec) / LN2
        out = []
        tok = lm.tokenizer
        for i, text in enumerate(texts):
            words = [tok.decode([int(t)]).strip() for t in ids[i]]
            row = {"text": text, "token": tok.decode([int(inputs["input_ids"][i, pos[i]])]).strip(),
                   "words": words, "ids": [int(t) for t in ids[i]],
                   "next_token_id": int(orig[i].argmax()),
                   "explanation": " ".join(words),
                   "fve": float(1 - err[i] / var_total[i].clamp_min(1e-30)),
                   "kl_bits": float(kl[i])}
            if best_of > 1:
                row["best_of"] = best_of
                row["best_words"] = " ".join(tok.decode([int(t)]).strip() for t in best_ids[i])
                row["best_fve"] = float(1 - best_err[i] / var_total[i].clamp_min(1e-30))
            out.append(row)
        return out
