"""Activation patching between prompts, layers and models, written as sessions.

``patch``: read the source prompt's hidden state at one site/position and write it into the
target prompt's forward at another; report the top-k next-token predictions before and after.

``sweep``: causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT") with a source prompt in place of the noised one: for every (layer, position) the
source activation is restored into the target run and a metric of the output is measured
(logit difference of two tokens, or the probability of one). The sweep runs the source once,
the clean target once, then all cells in batched target forwards: each row of a batch is one
cell, and one forward patches every layer, each at its own rows. With ``--pos`` covering T
positions and L layers that is ceil(L*T / batch_size) forwards instead of L*T.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.report.fmt import token_label
from reprlab.sessions.api import encode, session

logger = logging.getLogger(__name__)


def token_id(lm: Any, text: str) -> int:
    """The id of a single-token string (e.g. " Paris"); one clear error otherwise."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"{text!r} is {len(ids)} tokens for {lm.name}'s tokenizer; give strings "
                          "that are one token each (try with or without a leading space)")
    return int(ids[0])


def _logit_diff(last_logits: Any, ids: list[int]) -> Any:
    if len(ids) != 2:
        raise ConfigError("metric logit-diff needs two tokens: --tokens ' Paris',' London'")
    return last_logits[:, ids[0]] - last_logits[:, ids[1]]


def _prob(last_logits: Any, ids: list[int]) -> Any:
    return last_logits.softmax(-1)[:, ids[0]]


def _logprob(last_logits: Any, ids: list[int]) -> Any:
    return last_logits.log_softmax(-1)[:, ids[0]]


#: metric name -> f(logits at the last position [B, V] (value or tensor), token ids) -> [B]
METRICS: dict[str, Callable[[Any, list[int]], Any]] = {
    "logit-diff": _logit_diff, "prob": _prob, "logprob": _logprob,
}


def _topk_rows(lm: Any, probs: torch.Tensor, idx: torch.Tensor) -> list[dict]:
    toks = lm.tokenizer.convert_ids_to_tokens(idx.tolist())
    return [{"rank": r + 1, "token": token_label(t), "id": int(i), "prob": float(p)}
            for r, (t, i, p) in enumerate(zip(toks, idx.tolist(), probs.tolist()))]


def patch(lm: Any, source: str, target: str, from_site: str, to_site: str | None = None,
          pos: int | str = -1, *, source_model: Any = None, k: int = 5, backend: str = "local",
          remote: bool = False, on_log: Callable[[str], Any] | None = None,
          threads: int | None = None) -> dict:
    """Patch ``source``'s hidden state at ``from_site``/``pos`` into ``target`` at
    ``to_site``/``pos`` (``source_model``: read it from another model of the same hidden
    size). Returns the top-k predictions of source, clean target and patched target.
    ``threads``: torch threads for the forwards (None: reprlab's policy, see
    :func:`reprlab.sessions.session`)."""
    from reprlab.limits import cap

    to_site = to_site or from_site
    if not lm.is_causal:
        raise ConfigError(f"{lm.name} is not a causal language model; patching compares "
                          "next-token predictions")
    models = [lm] if source_model is None or source_model is lm else [lm, source_model]
    src = len(models) - 1
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    cap("k", k, "--k")
    vocab = min(int(m.arch.vocab_size or len(m.tokenizer)) for m in models)
    if k > vocab:
        raise ConfigError(f"--k {k} is more than the vocabulary ({vocab} tokens); ask for fewer")
    used = {"source": _position(models[src], source, pos, "source"),
            "target": _position(lm, target, pos, "target")}
    with session(models, backend=backend, remote=remote, on_log=on_log, threads=threads) as s:
        with s.trace(source, model=src) as t:
            h = t.read(from_site, pos=pos)
            if models[src].is_causal:
                top = t.logits[:, -1].softmax(-1).topk(k)
                t.save(top[0], "source_p")
                t.save(top[1], "source_i")
        with s.trace(target) as t:
            top = t.logits[:, -1].softmax(-1).topk(k)
            t.save(top[0], "target_p")
            t.save(top[1], "target_i")
        with s.trace(target) as t:
            t.write(to_site, h, pos=pos)
            top = t.logits[:, -1].softmax(-1).topk(k)
            t.save(top[0], "patched_p")
            t.save(top[1], "patched_i")
        s.log(f"patched {from_site} -> {to_site} at position {pos}")
    r = s.results
    out = {"source": source, "target": target, "from": from_site, "to": to_site, "pos": pos,
           "pos_used": used, "backend": backend, "remote": remote}
    for name in ("source", "target", "patched"):
        if f"{name}_p" in r:
            out[f"{name}_top"] = _topk_rows(models[src] if name == "source" else lm,
                                            r[f"{name}_p"][0], r[f"{name}_i"][0])
    return out


def check_fits(lm: Any, prompt: str, which: str) -> None:
    """Refuse a prompt longer than the model's positions (it would be cut, moving positions)."""
    limit = getattr(lm, "max_length", None)
    n = len(lm.tokenizer(prompt)["input_ids"])
    if limit and n > limit:
        raise ConfigError(f"the {which} prompt is {n} tokens, more than the {limit} positions "
                          f"{lm.name} takes; shorten it")


def _position(lm: Any, prompt: str, pos: int | str, which: str) -> int | str:
    """The token index ``pos`` names in ``prompt`` (refused when it lies outside)."""
    check_fits(lm, prompt, which)
    if isinstance(pos, str):
        return pos
    n = int(encode(lm, prompt)["attention_mask"].sum())
    if not -n <= int(pos) < n:
        raise ConfigError(f"--pos {pos} is outside the {which} prompt, which is {n} tokens "
                          f"long; use a position from {-n} to {n - 1}")
    return int(pos) % n


@dataclass
class SweepResult:
    """Metric of the patched target per (site, position) and its two baselines."""

    sites: list[str]
    positions: list[int]
    tokens: list[str]
    metric: str
    values: torch.Tensor            # [n_sites, n_positions]
    target_clean: float
    source_clean: float | None
    n_forwards: int
    extra: dict = field(default_factory=dict)

    @property
    def effect(self) -> torch.Tensor:
        """values - target_clean (how far patching moves the metric)."""
        return self.values - self.target_clean

    @property
    def recovery(self) -> torch.Tensor | None:
        """(values - target) / (source - target): 1 = patching restores the source."""
        if self.source_clean is None or abs(self.source_clean - self.target_clean) < 1e-12:
            return None
        return self.effect / (self.source_clean - self.target_clean)

    def to_json(self) -> dict:
        rec = self.recovery
        return {"sites": self.sites, "positions": self.positions, "tokens": self.tokens,
                "metric": self.metric, "values": self.values.tolist(),
                "effect": self.effect.tolist(),
                "recovery": None if rec is None else rec.tolist(),
                "target_clean": self.target_clean, "source_clean": self.source_clean,
                "n_forwards": self.n_forwards, **self.extra}


def sweep(lm: Any, source: str, target: str, sites: str | Sequence[str] = "layers.*",
          positions: Sequence[int] | None = None, metric: str = "logit-diff",
          tokens: Sequence[str] = (), *, source_model: Any = None, batch_size: int = 64,
          backend: str = "local", remote: bool = False,
          on_log: Callable[[str], Any] | None = None,
          threads: int | None = None) -> SweepResult:
    """Patch every (site, position) from ``source`` into ``target``; measure ``metric``
    (``threads``: torch threads for the forwards; None: reprlab's policy)."""
    from reprlab.sites import resolve_sites

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if not lm.is_causal:
        raise ConfigError(f"{lm.name} is not a causal language model; the sweep measures "
                          "next-token logits")
    if not tokens:
        raise ConfigError("give the metric's tokens, e.g. --tokens ' Paris',' London'")
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    ids = [token_id(lm, t) for t in tokens]
    models = [lm] if source_model is None or source_model is lm else [lm, source_model]
    src = len(models) - 1
    site_names = [s.name for s in resolve_sites(lm, sites)]
    resolve_sites(models[src], site_names)
    check_fits(models[src], source, "source")
    check_fits(lm, target, "target")
    n_src = int(encode(models[src], source)["attention_mask"].sum())
    tgt_inputs = encode(lm, target)
    n_tgt = int(tgt_inputs["attention_mask"].sum())
    if n_src != n_tgt:
        raise ConfigError(f"source and target are {n_src} and {n_tgt} tokens long; a position "
                          "sweep patches token by token, so use prompts of equal token length")
    if positions is not None:
        from reprlab.limits import cap

        cap("positions", len(positions), "--positions")
        outside = [p for p in positions if not -n_tgt <= int(p) < n_tgt]
        if outside:
            raise ConfigError(f"--positions {', '.join(map(str, outside[:5]))} lie outside the "
                              f"prompts, which are {n_tgt} tokens long; use positions from "
                              f"{-n_tgt} to {n_tgt - 1}")
    pos_list = list(range(n_tgt)) if positions is None else [p % n_tgt for p in positions]
    cells = [(si, p) for si in range(len(site_names)) for p in pos_list]
    chunks = [cells[i:i + batch_size] for i in range(0, len(cells), batch_size)]
    fn = METRICS[metric]
    with session(models, backend=backend, remote=remote, on_log=on_log, threads=threads) as s:
        with s.trace(source, model=src) as t:
            hs = {name: t.read(name) for name in site_names}
            if models[src].is_causal:
                t.save(fn(t.logits[:, -1], ids), "source_clean")
        with s.trace(target) as t:
            t.save(fn(t.logits[:, -1], ids), "target_clean")
        for c, chunk in enumerate(chunks):
            with s.trace([target] * len(chunk)) as t:
                for si, name in enumerate(site_names):
                    rows = [r for r, (cs, _) in enumerate(chunk) if cs == si]
                    if not rows:
                        continue
                    at = [chunk[r][1] for r in rows]
                    t.write(name, hs[name][0, at], pos=at, rows=rows)
                t.save(fn(t.logits[:, -1], ids), f"cells_{c}")
            s.log(f"sweep batch {c + 1}/{len(chunks)} ({len(chunk)} cells)")
    r = s.results
    flat = torch.cat([r[f"cells_{c}"] for c in range(len(chunks))])
    values = flat.reshape(len(site_names), len(pos_list)).float()
    tok_strs = lm.tokenizer.convert_ids_to_tokens(tgt_inputs["input_ids"][0].tolist())
    real = tgt_inputs["attention_mask"][0].bool().tolist()
    tok_strs = [t for t, keep in zip(tok_strs, real) if keep]
    return SweepResult(
        sites=site_names, positions=pos_list, tokens=[token_label(tok_strs[p]) for p in pos_list],
        metric=metric, values=values, target_clean=float(r["target_clean"][0]),
        source_clean=float(r["source_clean"][0]) if "source_clean" in r else None,
        n_forwards=2 + len(chunks),
        extra={"metric_tokens": list(tokens), "batch_size": batch_size,
               "n_cells": len(cells), "naive_forwards": 2 + len(cells),
               "forwards_saved": len(cells) - len(chunks)},
    )


def heatmap_figure(res: SweepResult) -> Any:
    """Heatmap of the effect (patched - clean target) over sites × positions."""
    from reprlab.report.plots import heatmap, layer_labels, new_figure

    fig, ax = new_figure(width=max(5.0, 0.55 * len(res.positions) + 2.5),
                         height=max(3.0, 0.35 * len(res.sites) + 1.5))
    heatmap(ax, res.effect.numpy(), [f"{p}:{t}" for p, t in zip(res.positions, res.tokens)],
            layer_labels(res.sites), cmap="RdBu_r", center=0.0,
            cbar_label=f"{res.metric} change")
    ax.set_xlabel("target position (token)")
    ax.set_ylabel("patched site")
    ax.set_title(f"patching effect on {res.metric}")
    return fig


def expected_forwards(n_sites: int, n_positions: int, batch_size: int) -> int:
    return 2 + math.ceil(n_sites * n_positions / batch_size)
