"""The talkative lens's trainable pair: a decoder LM that turns an activation into ``t``
tokens, and an encoder LM that turns those tokens back into the activation.

Decoder: the activation goes through ``proj_in`` (d×d, identity at init) and replaces the
marker slot of a soft prompt (initialised from the embeddings of a text prompt); ``t`` tokens
follow by Gumbel-softmax straight-through sampling: the forward pass carries exact one-hot
vectors (so one-hot × embedding table is exactly an embedding lookup), the backward pass the
gradient of the soft sample. Generation runs with a KV cache (each token costs one position)
or naively (the whole prefix again for every token); both give the same tokens and gradients.

Encoder: a soft prompt, then the tokens' embeddings (one-hot × the encoder's table); the state
of the last token at block ``encoder_layer`` goes through ``proj_out`` (d×d, identity at init)
to give the reconstruction Â.

Injection at a block (``inject``, e.g. ``layers.4``; Patchscopes, Ghandeharioun et al. 2024):
instead of the marker's input embedding, the decoder's residual stream at the marker *after
that block* is replaced by the activation (at its own norm, through ``proj_in``). Injected at
the block the activation was read from, the decoder's later blocks read it as the model does
(without the attention to the text it came from): with a prompt that ends at the marker, the
first token of an untrained decoder is close to the model's own next token.

Scale matching: residual activations are far larger than token embeddings (norm ≈ 230 against
≈ 1 at the toy's middle layers), so the activation is multiplied by ``scale`` (a power of two
near mean embedding norm / mean activation norm) before ``proj_in``, and the encoder's state
goes through ``proj_out`` at that same scale and is divided by it again: the projections work
at the embeddings' scale, and since the factor is a power of two, scaling in and back out is
exact in floating point.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprlab import hooks
from reprlab.errors import ConfigError, SiteError
from reprlab.models import discover
from reprlab.sites import parse_sites


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact one-hot of ``index``; backward: the gradient goes to ``soft``."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log U)``."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def straight_through(logits: torch.Tensor, tau: float,
                     noise: torch.Tensor | None) -> torch.Tensor:
    """Hard one-hot sample of ``softmax((logits + noise) / tau)`` with its soft gradient.

    ``logits [B, V]``; ``noise`` Gumbel noise of the same shape, or ``None`` for the argmax.
    """
    z = logits if noise is None else logits + noise.to(logits)
    soft = F.softmax(z / tau, dim=-1)
    return _StraightThrough.apply(soft, z.argmax(-1))


def matching_scale(activation_norm: float, embedding_norm: float) -> float:
    """The power of two nearest ``embedding_norm / activation_norm`` (1.0 for bad input)."""
    if not (activation_norm > 0 and embedding_norm > 0) or not math.isfinite(
            activation_norm / embedding_norm):
        return 1.0
    return float(2.0 ** round(math.log2(embedding_norm / activation_norm)))


def to_embedding_scale(a: torch.Tensor, scale: float) -> torch.Tensor:
    """Activations ``[..., d]`` at the embeddings' scale (``a · scale``)."""
    return a * scale


def from_embedding_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Back from the embeddings' scale (``x / scale``); exact inverse for a power of two."""
    return x / scale


def identity_linear(d_in: int, d_out: int, allow_rect: bool) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.bias.zero_()
        if d_in == d_out:
            lin.weight.copy_(torch.eye(d_in))
        elif not allow_rect:
            raise ConfigError("internal: rectangular projection not allowed")
    return lin


@dataclass
class Generation:
    """What the decoder produced: ``onehots [B, t, V]``, ``logits [B, t, V]``, ``ids [B, t]``."""

    onehots: torch.Tensor
    logits: torch.Tensor

    @property
    def ids(self) -> torch.Tensor:
        return self.onehots.argmax(-1)


class TalkModule(nn.Module):
    """Decoder + encoder + projections + soft prompts: every trainable part of the lens."""

    def __init__(self, decoder: nn.Module, encoder: nn.Module, d_target: int,
                 prompt_ids: list[int], marker: int, encoder_prompt_ids: list[int],
                 encoder_layer: int, *, train_decoder: bool = True, train_encoder: bool = True,
                 allow_rect: bool = False, scale: float = 1.0, inject: str | None = None):
        super().__init__()
        self.scale = float(scale)
        self._inject_site = None
        if inject:
            try:
                self._inject_site = parse_sites(inject, discover(decoder))[0]
            except SiteError as exc:
                raise ConfigError(f"--inject {inject}: {exc}") from None
        self.decoder, self.encoder = decoder, encoder
        d_dec = decoder.get_input_embeddings().weight.shape[1]
        d_enc = encoder.get_input_embeddings().weight.shape[1]
        for name, d in (("decoder", d_dec), ("encoder", d_enc)):
            if d != d_target and not allow_rect:
                raise ConfigError(
                    f"the site has width {d_target} but the {name} LM's is {d}; use a {name} "
                    f"of width {d_target} or pass --rect-projection to learn a {d_target}x{d} "
                    "projection from scratch")
        self.proj_in = identity_linear(d_target, d_dec, allow_rect)
        self.proj_out = identity_linear(d_enc, d_target, allow_rect)
        if not 0 <= marker < len(prompt_ids):
            raise ConfigError("the decoder prompt needs the <embed> marker")
        with torch.no_grad():
            emb = decoder.get_input_embeddings().weight
            self.dec_prompt = nn.Parameter(emb[torch.tensor(prompt_ids)].clone())
            eemb = encoder.get_input_embeddings().weight
            self.enc_prompt = nn.Parameter(eemb[torch.tensor(encoder_prompt_ids or [0])].clone())
        self.has_enc_prompt = bool(encoder_prompt_ids)
        self.marker = marker
        earch = discover(encoder)
        if not 0 <= encoder_layer < earch.n_layers:
            raise ConfigError(f"--encoder-layer {encoder_layer} is outside the encoder's "
                              f"{earch.n_layers} blocks")
        self.encoder_layer = encoder_layer
        self._enc_site = parse_sites(f"layers.{encoder_layer}", earch)[0]
        for p in decoder.parameters():
            p.requires_grad_(train_decoder)
        # the encoder is read at one block: later blocks, its final norm and head get no grad
        for p in encoder.parameters():
            p.requires_grad_(False)
        if train_encoder:
            blocks = encoder.get_submodule(earch.layers_path)
            for block in list(blocks)[: encoder_layer + 1]:
                for p in block.parameters():
                    p.requires_grad_(True)
            for p in encoder.get_input_embeddings().parameters():
                p.requires_grad_(True)

    # -- decoder ---------------------------------------------------------------------------
    @functools.cached_property
    def _cache_arg(self) -> str:
        """The KV-cache argument: ``past_key_values`` up to transformers 5.23, ``cache`` after
        (looked up once: a signature inspection per decoded token showed in the profile)."""
        import inspect

        params = inspect.signature(self.decoder.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _slot(self, a: torch.Tensor) -> torch.Tensor:
        """``proj_in`` of the activation, at the embeddings' scale ``[B, d_dec]``."""
        return self.proj_in(to_embedding_scale(a.to(self.proj_in.weight.dtype), self.scale))

    def prefix(self, a: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings ``[B, L, d_dec]`` with ``proj_in(a)`` at the marker (the
        prompt's own marker row when the activation is injected at a block instead)."""
        p = self.dec_prompt[None].expand(a.shape[0], -1, -1)
        if self._inject_site is not None:
            return p
        slot = self._slot(a)[:, None]
        return torch.cat([p[:, : self.marker], slot, p[:, self.marker + 1:]], dim=1)

    def injecting(self, a: torch.Tensor):
        """Context for a decoder forward over the whole prefix: with ``inject``, the marker's
        residual after that block becomes the activation (back at its own norm)."""
        if self._inject_site is None:
            return contextlib.nullcontext()
        slot = from_embedding_scale(self._slot(a), self.scale)
        m = self.marker

        def fn(h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h[:, :m], slot[:, None].to(h.dtype), h[:, m + 1:]], dim=1)
        return hooks.edit(self.decoder, {self._inject_site: fn})

    def generate(self, a: torch.Tensor, t: int, tau: float, noise: torch.Tensor | None = None,
                 use_cache: bool = True) -> Generation:
        """``t`` straight-through tokens for activations ``a [B, d]``; ``noise [B, t, V]``."""
        emb = self.decoder.get_input_embeddings().weight
        seq = self.prefix(a)
        onehots, logits = [], []
        past = None
        step_in = seq
        for i in range(t):
            if use_cache:
                kw = {} if past is None else {self._cache_arg: past}
                with self.injecting(a) if past is None else contextlib.nullcontext():
                    out = self.decoder(inputs_embeds=step_in, use_cache=True, **kw)
                past = out.get("cache", out.get("past_key_values"))
            else:
                with self.injecting(a):
                    out = self.decoder(inputs_embeds=seq, use_cache=False)
            lg = out.logits[:, -1].float()
            y = straight_through(lg, tau, None if noise is None else noise[:, i])
            e = (y.to(emb.dtype) @ emb)[:, None]
            onehots.append(y)
            logits.append(lg)
            if use_cache:
                step_in = e
            else:
                seq = torch.cat([seq, e], dim=1)
        return Generation(torch.stack(onehots, 1), torch.stack(logits, 1))

    def score(self, a: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits ``[B, t, V]`` for the tokens ``ids [B, t]``: entry
        ``i`` is the distribution the decoder gave token ``i`` after the prefix and ``ids[:, :i]``
        (one forward; what sampling would have seen)."""
        emb = self.decoder.get_input_embeddings().weight
        seq = self.prefix(a)
        x = torch.cat([seq, emb[ids[:, :-1]]], dim=1)
        with self.injecting(a):
            logits = self.decoder(inputs_embeds=x, use_cache=False).logits
        n = seq.shape[1]
        return logits[:, n - 1: n - 1 + ids.shape[1]].float()

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, onehots: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[B, d]`` from token one-hots ``[B, t, V]`` (or ids ``[B, t]``;
        ``t`` may be 0: the empty explanation, the encoder's prompt alone)."""
        emb = self.encoder.get_input_embeddings().weight
        if onehots.dtype in (torch.long, torch.int32, torch.int64):
            x = emb[onehots]
        else:
            x = onehots.to(emb.dtype) @ emb
        if self.has_enc_prompt or x.shape[1] == 0:
            x = torch.cat([self.enc_prompt[None].expand(x.shape[0], -1, -1), x], dim=1)
        with hooks.record(self.encoder, [self._enc_site], detach=False, stop=True) as cache:
            hooks.run_until_stop(lambda: self.encoder(inputs_embeds=x, use_cache=False))
        h = to_embedding_scale(cache[self._enc_site.name][:, -1], self.scale)
        return from_embedding_scale(self.proj_out(h), self.scale)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
