"""How good a talkative lens is, on held-out samples, beside the baselines that expose a lens
that says nothing the text does not: FVE (against the training mean) and the KL of the
target's next-token distribution with each reconstruction patched in at the site, for

* ``lens``: the greedy explanation through the encoder;
* ``best_of_K``: the best of K sampled explanations (the greedy one among them);
* ``lookup``: no lens at all, the mean training activation of the current token (the
  training mean for a token never seen in training);
* ``context_echo``: the last t tokens of the text as the explanation, through a copy of the
  lens's encoder trained on them (same samples, ``echo_epochs`` epochs, MSE);
* ``empty``: the encoder's prompt alone (no explanation);
* ``other_row``: another sample's explanation;
* ``shuffled``: the explanation's tokens in a random order;
* ``resample``: another text's activation (resample ablation);
* ``pca``: the projection on the first t principal components of the training activations
  (for scale: the best t-dimensional linear code);
* ``mean``: the training mean (FVE 0 by definition).

``share_of_lookup_residual`` is ``(FVE - FVE_lookup) / (1 - FVE_lookup)``: the part of what
the current token leaves unexplained that the lens explains. Each FVE has a 95% interval from
a bootstrap over whole held-out texts, and the lens's differences from the lookup, the
context echo and its shuffled tokens have paired ones (the same resampled texts for both).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from reprlab.lenses.metrics import LN2, fve, kl_logits, normalised_rmse, token_usage
from reprlab.lenses.talk.data import LensData
from reprlab.lenses.talk.lens import TalkativeLens
from reprlab.lenses.talk.losses import normalised_mse
from reprlab.lenses.talk.model import TalkModule, gumbel_noise
from reprlab.lenses.talk.splice import splice_logits
from reprlab.models import LoadedModel
from reprlab.sites import resolve_sites

BASELINES = ("lookup", "context_echo", "empty", "other_row", "shuffled", "resample", "pca",
             "mean")


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


def token_lookup(train_a: torch.Tensor, train_tokens: torch.Tensor, tokens: torch.Tensor,
                 mean: torch.Tensor) -> torch.Tensor:
    """For each of ``tokens [N]``, the mean of ``train_a [M, d]`` over the training samples
    with that current token (``mean [d]`` for a token never seen) -> ``[N, d]``."""
    out = mean.to(train_a.dtype).expand(tokens.shape[0], -1).clone()
    for tok in torch.unique(tokens).tolist():
        hit = train_tokens == tok
        if hit.any():
            out[tokens == tok] = train_a[hit].mean(0)
    return out


def pca_reconstruction(train_a: torch.Tensor, a: torch.Tensor, mean: torch.Tensor, k: int
                       ) -> torch.Tensor:
    """``a [N, d]`` projected on the first ``k`` principal components of ``train_a``
    (centred at ``mean``) -> ``[N, d]``."""
    x = (train_a - mean).double()
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    basis = vh[:k]
    return (((a.double() - mean.double()) @ basis.T) @ basis + mean.double()).to(a.dtype)


#: epochs of the context echo's encoder (1 understated it by 0.07 FVE on the toy; 3 by 0.01)
ECHO_EPOCHS = 6.0


def train_echo_encoder(module: TalkModule, data: LensData, train_idx: list[int], t: int, *,
                       epochs: float = 1.0, batch_size: int = 32, lr: float = 1e-4,
                       proj_lr: float = 1e-3, variance: torch.Tensor | float = 1.0,
                       seed: int = 0) -> TalkModule:
    """A copy of the lens's encoder trained (MSE, AdamW) to rebuild each training activation
    from the last ``t`` tokens of its text: the context-echo baseline's encoder."""
    echo = copy.deepcopy(module)
    params = [p for n, p in echo.named_parameters()
              if n.startswith(("encoder.", "proj_out.", "enc_prompt"))]
    for p in echo.parameters():
        p.requires_grad_(False)
    small = [echo.proj_out.weight, echo.proj_out.bias, echo.enc_prompt]
    for p in params:
        p.requires_grad_(True)
    # the encoder's blocks past the one read get no gradient; only train what is used
    used = [p for p in params if all(p is not q for q in small)]
    opt = torch.optim.AdamW([{"params": small, "lr": proj_lr}, {"params": used, "lr": lr}],
                            weight_decay=0.0)
    dev = next(echo.parameters()).device
    g = torch.Generator().manual_seed(seed + 17)
    n_steps = max(1, int(round(epochs * max(1, len(train_idx) // batch_size))))
    idx_all = torch.tensor(train_idx)
    order = torch.randperm(len(train_idx), generator=g)
    cursor = 0
    for _ in range(n_steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(train_idx), generator=g), 0
        b = idx_all[order[cursor:cursor + batch_size]]
        cursor += batch_size
        a = data.a[b].to(dev)
        a_hat = echo.encode(original_tokens(data, b, t).to(dev))
        loss = normalised_mse(a_hat, a, torch.as_tensor(variance).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    for p in echo.parameters():
        p.requires_grad_(False)
    return echo.eval()


def text_bootstrap(errors: dict[str, torch.Tensor], spread: torch.Tensor, groups: torch.Tensor,
                   *, draws: int = 1000, level: float = 0.95, seed: int = 0
                   ) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each method's FVE ``1 - Σ err / Σ spread`` when the texts
    ``groups [N]`` are drawn with replacement (every method on the same draws), and of the
    paired difference of each method from ``lens`` (keys ``lens-NAME``). ``errors`` map a
    name to per-sample ``‖Â - A‖² [N]``; ``spread`` is ``‖A - Ā‖² [N]``."""
    _, inv = torch.unique(groups, return_inverse=True)
    n_texts = int(inv.max()) + 1
    def per_text(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_texts, dtype=torch.float64).index_add_(0, inv, x.double())
    g = torch.Generator().manual_seed(seed + 31)
    counts = torch.zeros(draws, n_texts, dtype=torch.float64)
    pick = torch.randint(0, n_texts, (draws, n_texts), generator=g)
    counts.scatter_add_(1, pick, torch.ones_like(pick, dtype=torch.float64))
    s = counts @ per_text(spread)
    fves = {k: 1 - (counts @ per_text(e)) / s.clamp_min(1e-30) for k, e in errors.items()}
    if "lens" in fves:
        fves.update({f"lens-{k}": fves["lens"] - v for k, v in list(fves.items())
                     if k != "lens"})
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return {k: tuple(float(x) for x in torch.quantile(v, q)) for k, v in fves.items()}


def evaluate_talk(lm: LoadedModel, lens: TalkativeLens, data: LensData, idx: list[int], *,
                  train_idx: list[int] | None = None, best_of: int = 4, batch_size: int = 32,
                  seed: int = 0, echo_epochs: float = ECHO_EPOCHS, kl: bool = True) -> dict[str, Any]:
    """Metrics of ``lens`` and every baseline on samples ``idx`` of ``data`` (FVE against
    the lens's training mean; ``train_idx`` feeds the lookup, PCA and context-echo
    baselines: by default every sample not in ``idx``)."""
    if not idx:
        return {}
    held = set(idx)
    train_idx = train_idx if train_idx is not None else [i for i in range(len(data))
                                                         if i not in held]
    site = resolve_sites(lm, lens.site_name)[0]
    dev = lm.device
    mod = lens.module.to(dev)
    t = lens.tokens
    mean = lens.tensors["a_mean"].cpu().float()
    var = lens.tensors["a_var"].cpu().float()
    tr = torch.tensor(train_idx)
    train_a = data.a[tr]
    echo = train_echo_encoder(mod, data, train_idx, t, epochs=echo_epochs, variance=var,
                              seed=seed) if echo_epochs > 0 else None
    g = torch.Generator().manual_seed(seed)
    vocab = mod.decoder.get_input_embeddings().weight.shape[0]
    names = ("lens", f"best_of_{best_of}", "lookup", "context_echo", "empty", "other_row",
             "shuffled", "resample", "pca", "mean")
    recs: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    kls: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    parts: dict[str, list[torch.Tensor]] = {"a": [], "ids": []}
    for s in range(0, len(idx), batch_size):
        b = torch.tensor(idx[s:s + batch_size])
        a = data.a[b].to(dev)
        with torch.no_grad():
            ids, a_hat = lens.reconstruct(a)
            best, best_err = a_hat.clone(), (a_hat - a).pow(2).sum(-1)
            for _ in range(max(0, best_of - 1)):
                noise = gumbel_noise((len(b), t, vocab), g).to(dev)
                _, s_hat = lens.reconstruct(a, noise)
                err = (s_hat - a).pow(2).sum(-1)
                better = err < best_err
                best[better], best_err[better] = s_hat[better], err[better]
            ctx_tokens = original_tokens(data, b, t).to(dev)
            got = {
                "lens": a_hat, f"best_of_{best_of}": best,
                "lookup": token_lookup(train_a, data.token[tr], data.token[b], mean).to(dev),
                "context_echo": (echo.encode(ctx_tokens) if echo is not None
                                 else torch.full_like(a, float("nan"))),
                "empty": mod.encode(ids[:, :0]),
                "other_row": mod.encode(ids.roll(1, 0)),
                "shuffled": mod.encode(shuffled(ids.cpu(), g).to(dev)),
                "resample": data.a2[b].to(dev),
                "pca": pca_reconstruction(train_a, a.cpu(), mean, t).to(dev),
                "mean": mean.to(dev).expand_as(a),
            }
            if kl:
                ctx, pos = data.context(b)
                for name, rec in got.items():
                    if torch.isnan(rec).any():
                        kls[name].append(torch.full((len(b),), float("nan")))
                        continue
                    orig, patched = splice_logits(lm, site, ctx, pos, rec)
                    kls[name].append((kl_logits(orig, patched) / LN2).cpu())
        for name, rec in got.items():
            recs[name].append(rec.detach().cpu())
        parts["a"].append(a.cpu())
        parts["ids"].append(ids.cpu())
    a_all = torch.cat(parts["a"])
    spread = ((a_all.double() - mean.double()) ** 2).sum(-1)
    errs = {n: ((torch.cat(recs[n]).double() - a_all.double()) ** 2).sum(-1) for n in names}
    ci = text_bootstrap({n: e for n, e in errs.items() if not torch.isnan(e).any()}, spread,
                        data.row[torch.tensor(idx)], seed=seed)
    nan2 = (float("nan"), float("nan"))
    rows = []
    for name in names:
        rec = torch.cat(recs[name])
        lo, hi = ci.get(name, nan2)
        row = {"name": name, "fve": float(fve(rec, a_all, mean)), "fve_lo": lo, "fve_hi": hi}
        if kl:
            row["kl_bits"] = float(torch.cat(kls[name]).mean())
        rows.append(row)
    by = {r["name"]: r for r in rows}
    look = by["lookup"]["fve"]
    out: dict[str, Any] = {
        "samples": len(idx), "train_samples": len(train_idx), "tokens": t,
        "fve": by["lens"]["fve"],
        "nrmse": float(normalised_rmse(torch.cat(recs["lens"]), a_all)),
        "kl_bits": by["lens"].get("kl_bits", float("nan")),
        "share_of_lookup_residual": (by["lens"]["fve"] - look) / max(1e-12, 1 - look),
        "best_of": best_of,
        f"fve_best_of_{best_of}": by[f"best_of_{best_of}"]["fve"],
        "baselines": rows,
        "token_usage": token_usage(torch.cat(parts["ids"])),
        "echo_epochs": echo_epochs,
        "fve_minus_lookup_ci": list(ci.get("lens-lookup", nan2)),
        "fve_minus_context_echo_ci": list(ci.get("lens-context_echo", nan2)),
        "fve_minus_shuffled_ci": list(ci.get("lens-shuffled", nan2)),
    }
    for name in BASELINES:
        out[f"fve_{name}"] = by[name]["fve"]
    return out
