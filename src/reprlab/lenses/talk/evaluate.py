"""How good a talkative lens is: FVE, normalised RMSE, KL and token usage on held-out
samples, against intervention baselines (the generated tokens shuffled; another sample's
explanation; the encoder fed the original context tokens) and best-of-K sampling."""

from __future__ import annotations

from typing import Any

import torch

from reprlab.lenses.metrics import LN2, fve, kl_logits, normalised_rmse, token_usage
from reprlab.lenses.talk.data import LensData
from reprlab.lenses.talk.lens import TalkativeLens
from reprlab.lenses.talk.model import gumbel_noise
from reprlab.lenses.talk.splice import splice_logits
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites


def original_tokens(data: LensData, idx: torch.Tensor, t: int) -> torch.Tensor:
    """The ``t`` context tokens ending at each sampled position ``[B, t]`` (the first token
    repeated where the context is shorter)."""
    rows, pos = data.row[idx], data.pos[idx]
    offs = torch.arange(-t + 1, 1)
    cols = (pos[:, None] + offs[None]).clamp(min=0)
    return data.input_ids[rows[:, None], cols]


def shuffled(ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each row's tokens in a random order ``[B, t]``."""
    order = torch.argsort(torch.rand(ids.shape, generator=g), dim=1)
    return ids.gather(1, order)


def evaluate_talk(lm: LoadedModel, lens: TalkativeLens, data: LensData, idx: list[int], *,
                  best_of: int = 4, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``lens`` on samples ``idx`` of ``data`` (FVE against the dataset mean)."""
    if not idx:
        return {}
    site = resolve_sites(lm, lens.site_name)[0]
    dev = lm.device
    mod = lens.module.to(dev)
    t = lens.tokens
    g = torch.Generator().manual_seed(seed)
    vocab = mod.decoder.get_input_embeddings().weight.shape[0]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                            ("a", "hat", "shuf", "other", "orig", "best", "ids",
                                                 "kl")}
    for s in range(0, len(idx), batch_size):
        b = torch.tensor(idx[s:s + batch_size])
        a = data.a[b].to(dev)
        with torch.no_grad():
            ids, a_hat = lens.reconstruct(a)
            a_shuf = mod.encode(shuffled(ids.cpu(), g).to(dev))
            a_other = mod.encode(ids.roll(1, 0))  # another sample's explanation
            a_orig = mod.encode(original_tokens(data, b, t).to(dev))
            best, best_err = a_hat.clone(), (a_hat - a).pow(2).sum(-1)
            for _ in range(max(0, best_of - 1)):
                noise = gumbel_noise((len(b), t, vocab), g).to(dev)
                _, s_hat = lens.reconstruct(a, noise)
                err = (s_hat - a).pow(2).sum(-1)
                better = err < best_err
                best[better], best_err[better] = s_hat[better], err[better]
            ctx, pos = data.context(b)
            orig, rec = splice_logits(lm, site, ctx, pos, a_hat)
        for k, v in (("a", a), ("hat", a_hat), ("shuf", a_shuf), ("other", a_other),
                     ("orig", a_orig),
                     ("best", best), ("ids", ids), ("kl", kl_logits(orig, rec) / LN2)):
            parts[k].append(v.detach().cpu())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    mean = lens.tensors["a_mean"].cpu()
    a = cat["a"]
    return {
        "samples": len(idx),
        "fve": float(fve(cat["hat"], a, mean)),
        "nrmse": float(normalised_rmse(cat["hat"], a)),
        "kl_bits": float(cat["kl"].mean()),
        "fve_shuffled": float(fve(cat["shuf"], a, mean)),
        "fve_original_tokens": float(fve(cat["orig"], a, mean)),
        "fve_other_sample": float(fve(cat["other"], a, mean)),
        f"fve_best_of_{best_of}": float(fve(cat["best"], a, mean)),
        "best_of": best_of,
        "token_usage": token_usage(cat["ids"]),
    }
