"""Evaluation across distribution shifts, adapter on and off, with the coherence guard.

Per split: the preference accuracy of the policy with no reference (σ(mean log-prob chosen −
mean log-prob rejected) > 0.5, the ``open_pref_eval`` score), DPO's implicit-reward accuracy
(the adapter's log-ratio margin against the base, > 0), the chosen-completion perplexity and
its ratio to the base model, for the adapter on and off (the base row). Splits are grouped by
named shift (in-domain, difficulty, cross-domain, orthogonal). Per-row correctness is saved so
that :mod:`reprlab.prefs.comparison` can bootstrap over seeds and rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ConfigError, StoreError
from reprlab.io import read_json
from reprlab.models import LoadedModel, as_loaded
from reprlab.prefs.data import load_preferences
from reprlab.prefs.guard import DEFAULT_THRESHOLD, generation_check, is_incoherent, perplexity_ratio
from reprlab.prefs.refcache import compute_reference
from reprlab.prefs.tokenize import tokenize_prefs

logger = logging.getLogger(__name__)

#: shift name -> category (the toy world's names; GENIES-style names map the same way)
CATEGORIES = {"train": "train", "in-domain": "in-domain", "harder": "difficulty",
              "cross-domain": "cross-domain", "orthogonal": "orthogonal"}


def default_splits(data: str) -> dict[str, str]:
    """The evaluation splits of a training set: for a built-in preference set with named
    shifts (``builtin:toy-prefs``, ``builtin:toy-syco-prefs``), every ``<name>-<shift>``
    built-in but the tuning sets (``-validation``, ``-control``); otherwise the training data
    itself."""
    from reprlab.data.builtins import BUILTINS

    if data.startswith("builtin:"):
        name = data.split(":", 1)[1]
        shifts = {k[len(name) + 1:]: f"builtin:{k}" for k, b in BUILTINS.items()
                  if k.startswith(name + "-") and b.kind == "preferences" and not b.tuning}
        if shifts:
            return shifts
    return {"train": data}


@dataclass(frozen=True)
class EvalResult:
    """Accuracy per split with the adapter on and off, and the coherence verdict."""

    run_dir: Path | None
    method: str
    seed: int | None
    rows: tuple[dict, ...]
    ppl_ratio: dict[str, float]
    threshold: float
    incoherent: bool
    generation: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, split: str, adapter: str = "on", metric: str = "pref_acc") -> float:
        return next(r[metric] for r in self.rows if r["split"] == split and r["adapter"] == adapter)

    def table(self) -> str:
        head = f"{'split':<14}{'shift':<14}{'adapter':<9}{'pref acc':>9}{'reward acc':>11}" \
               f"{'ppl chosen':>12}{'ppl ratio':>11}"
        lines = [head]
        for r in self.rows:
            ra = "" if r["reward_acc"] is None else f"{r['reward_acc']:.3f}"
            lines.append(f"{r['split']:<14}{r['shift']:<14}{r['adapter']:<9}{r['pref_acc']:>9.3f}"
                         f"{ra:>11}{r['ppl_chosen']:>12.3g}{r.get('ppl_ratio') or 1.0:>11.2f}")
        verdict = (f"INCOHERENT: chosen perplexity rose more than {self.threshold:g}x on "
                   f"{', '.join(k for k, v in self.ppl_ratio.items() if not v <= self.threshold)}"
                   if self.incoherent else f"coherent (perplexity ratio <= {self.threshold:g}x)")
        g = self.generation
        if g:
            verdict += (f"; generation: {g['on']['well_formed']:.0%} well formed with the "
                        f"adapter, {g['off']['well_formed']:.0%} without")
        return "\n".join(lines + [verdict])


def _load_run(run: Path, model: LoadedModel | str | None, device: str) -> tuple[LoadedModel, Any,
                                                                             dict, dict]:
    from peft import PeftModel

    from reprlab.report import RunDir

    results = RunDir.load_results(run)
    if results.get("workflow") != "prefs-train":
        raise StoreError(f"{run} is not a `reprlab prefs train` run (workflow "
                         f"{results.get('workflow')!r})")
    manifest = read_json(run / "manifest.json")
    recorded = manifest["inputs"]["model"]
    lm = as_loaded(model if model is not None else recorded.get("spec"), device=device)
    mine = lm.identity()
    for k in ("config_hash", "weights_fingerprint"):
        if mine.get(k) != recorded.get(k):
            raise StoreError(f"the adapter in {run} was trained on {recorded.get('name')!r}, not on "
                             f"{mine.get('name')!r} ({k} differs); evaluate it with its own base "
                             "model")
    try:
        peft = PeftModel.from_pretrained(lm.model, str(run / "adapter"))
    except Exception as exc:  # a cut or garbled adapter file (safetensors' own error)
        raise StoreError(f"the adapter in {run / 'adapter'} is unreadable "
                         f"({str(exc).splitlines()[0][:80]}); train the run again") from None
    return lm, peft, results, mine


def _scores(lm: LoadedModel, tokens: Any, peft: Any, batch_size: int) -> dict[str, torch.Tensor]:
    on = compute_reference(lm, tokens, batch_size=batch_size)
    off = compute_reference(lm, tokens, batch_size=batch_size, adapter_off=peft.disable_adapter)
    return {"c_on": on.chosen, "r_on": on.rejected, "c_off": off.chosen, "r_off": off.rejected,
            "n_c": on.n_chosen.float(), "n_r": on.n_rejected.float()}


def _score_split(lm: LoadedModel, peft: Any, spec: Any, cfg: dict, limit: int | None,
                 batch_size: int) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    data = load_preferences(spec, limit=limit)
    tokens = tokenize_prefs(lm.tokenizer, data, max_length=lm.clamp_length(cfg["max_length"]),
                            max_prompt_length=cfg.get("max_prompt_length"),
                            raw_text=cfg["raw_text"], model_name=lm.name)
    return data, tokens, _scores(lm, tokens, peft, batch_size)


def _pref_acc(s: dict[str, torch.Tensor], adapter: str) -> torch.Tensor:
    """Per row: the mean log-prob of the chosen completion above the rejected one's."""
    return s[f"c_{adapter}"] / s["n_c"] > s[f"r_{adapter}"] / s["n_r"]


def validation_scores(lm: LoadedModel, peft: Any, splits: dict[str, Any], cfg: dict, *,
                      threshold: float = DEFAULT_THRESHOLD, batch_size: int = 16,
                      limit: int | None = None) -> dict[str, Any]:
    """The objective of a tuning run, scored on a just-trained adapter (``splits``: name ->
    spec or loaded triples): preference accuracy (adapter on and off) and chosen perplexity
    ratio per split. ``score`` is the mean accuracy
    over the splits whose name does not start with "control", or 0 when any split's
    perplexity ratio passes ``threshold`` (an incoherent run is never the best setting)."""
    per, ratios = {}, {}
    for name, spec in splits.items():
        _, tokens, s = _score_split(lm, peft, spec, cfg, limit, batch_size)
        ratios[name] = perplexity_ratio(s["c_on"], s["c_off"], s["n_c"])
        per[name] = {"n": len(tokens), "pref_acc": float(_pref_acc(s, "on").float().mean()),
                     "pref_acc_base": float(_pref_acc(s, "off").float().mean()),
                     "ppl_ratio": ratios[name]}
    scored = [v["pref_acc"] for k, v in per.items() if not k.startswith("control")]
    if not scored:
        raise ConfigError("--validate needs a split whose name does not start with 'control' "
                          "to score (control splits only check coherence)")
    incoherent = is_incoherent(ratios, threshold)
    acc = sum(scored) / len(scored)
    return {"splits": per, "pref_acc": acc, "incoherent": incoherent, "threshold": threshold,
            "score": 0.0 if incoherent else acc}


def evaluate(run: str | Path, splits: dict[str, Any] | None = None, *,
             model: LoadedModel | str | None = None, limit: int | None = 200,
             batch_size: int = 16, threshold: float = DEFAULT_THRESHOLD, generate: int = 8,
             device: str = "cpu", out: str | Path | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate the adapter of a finished ``prefs train`` run on ``splits`` (name -> data).

    A split named ``"shift/name"`` is grouped under that shift (e.g. ``"cross-domain/math"``
    for a GENIES-style set); plain names use :data:`CATEGORIES` or themselves.

    Writes a run directory (default ``RUN/eval``) with ``results.json``, ``shifts.csv``,
    ``shifts.png``, per-row correctness (``rows.safetensors``) and ``report.html``.
    """
    from reprlab.cliutil import check_finite
    from reprlab.prefs.report import shift_figure
    from reprlab.report import RunDir
    from reprlab.report.rundir import check_out

    check_finite({"threshold": threshold})
    if threshold <= 1:
        raise ConfigError(f"--threshold must be above 1 (a perplexity ratio), got {threshold}")
    if batch_size < 1 or generate < 0:
        raise ConfigError(f"--batch-size must be at least 1 and --generate 0 or more, got "
                          f"{batch_size} and {generate}")
    run = Path(run)
    check_out(out if out is not None else run / "eval", "prefs-eval")  # before the model loads
    lm, peft, results, identity = _load_run(run, model, device)
    cfg = results["config"]
    splits = splits or default_splits(cfg["data"])
    beta = float(results["method"].get("beta", cfg.get("beta", 0.1)))
    from tqdm.auto import tqdm

    rows, per_row, ratios, gen = [], {}, {}, {"on": [], "off": []}
    for key_name, spec in tqdm(list(splits.items()), desc="prefs eval", unit="split",
                               disable=not progress):
        shift, _, name = key_name.rpartition("/")
        shift = shift or CATEGORIES.get(name, name)
        data, tokens, s = _score_split(lm, peft, spec, cfg, limit, batch_size)
        digest = hashlib.sha256(json.dumps(  # which rows, in which order: compare checks it
            [[str(i) for i in tokens.ids], [[int(t) for t in ids] for ids in tokens.chosen_ids]]
        ).encode()).hexdigest()[:16]
        ratios[name] = perplexity_ratio(s["c_on"], s["c_off"], s["n_c"])
        for adapter in ("on", "off"):
            pref = _pref_acc(s, adapter)
            reward = None
            if adapter == "on":
                margin = beta * ((s["c_on"] - s["c_off"]) - (s["r_on"] - s["r_off"]))
                reward = float((margin > 0).float().mean())
                per_row[f"{name}|on|reward"] = (margin > 0).to(torch.int8)
            per_row[f"{name}|{adapter}|pref"] = pref.to(torch.int8)
            nll = -s[f"c_{adapter}"].sum() / s["n_c"].sum()
            rows.append({"split": name, "shift": shift, "adapter": adapter,
                         "n": len(tokens), "rows_digest": digest, "pref_acc": float(pref.float().mean()),
                         "reward_acc": reward, "ppl_chosen": float(torch.exp(nll)),
                         "ppl_ratio": ratios[name] if adapter == "on" else 1.0,
                         "truncated_or_dropped": tokens.report.rows - tokens.report.kept
                         + tokens.report.completion_truncated + tokens.report.prompt_truncated})
        if generate:
            end_ids = {ids[-1] for ids in tokens.chosen_ids}
            k = min(generate, len(tokens))
            budget = max(len(ids) for ids in tokens.chosen_ids) + 4
            prompts = list(tokens.prompts[-k:])  # the end of the split: least like the start
            want = [data.chosen[data.ids.index(i)] for i in tokens.ids[-k:]]
            gen["on"].append(generation_check(lm, prompts, want, end_ids,
                                              raw_text=cfg["raw_text"], max_new_tokens=budget))
            with peft.disable_adapter():
                gen["off"].append(generation_check(lm, prompts, want, end_ids,
                                                   raw_text=cfg["raw_text"],
                                                   max_new_tokens=budget))
    incoherent = is_incoherent(ratios, threshold)
    for r in rows:
        r["incoherent"] = incoherent and r["adapter"] == "on"
    generation = {}
    if generate:
        for side in ("on", "off"):
            checks = gen[side]
            n = sum(c.n for c in checks)
            generation[side] = {
                "n": n, "well_formed": sum(c.well_formed * c.n for c in checks) / max(n, 1),
                "matches_chosen": sum(c.matches_chosen * c.n for c in checks) / max(n, 1),
                "examples": [e for c in checks for e in c.examples[:2]]}
    result = EvalResult(run, results["method"]["name"], cfg.get("seed"), tuple(rows), ratios,
                        threshold, incoherent, generation)
    out_dir = Path(out) if out is not None else run / "eval"
    rd = RunDir.create(out_dir, "prefs-eval", {"threshold": threshold, "limit": limit,
                                               "splits": {k: str(v) for k, v in splits.items()}},
                       inputs={"model": identity, "run": str(run)}, seed=cfg.get("seed"),
                       settings={})  # an evaluation is redone with any settings
    rd.write_csv("shifts.csv", rows)
    rd.save_tensors("rows.safetensors", per_row)
    rd.figure(shift_figure(rows), "shifts.png", title="Preference accuracy per shift",
              caption="σ(mean log-prob chosen − rejected) > 0.5, adapter on vs off (base); "
                      "hatched: incoherent run")
    summary = result.table().splitlines()[-1]
    if (results.get("checks") or {}).get("adapter_moved") is False:
        from reprlab.prefs.report import still_line

        summary = still_line(results["checks"]) + " " + summary
        rd.text("Adapter", still_line(results["checks"]))
    rd.table("Accuracy per split", rows)
    rd.text("Coherence", result.table().splitlines()[-1])
    if generation:
        rd.table("Greedy answers to held-out prompts", [
            {"adapter": side, "prompt": p, "answer": a}
            for side in ("on", "off") for p, a in generation[side]["examples"]],
            note="well formed: ends with the end-of-turn token within the budget, not empty, no "
                 "token three times in a row")
    rd.finish({"workflow": "prefs-eval", "run": str(run), "method": result.method,
               "seed": result.seed, "rows": rows, "ppl_ratio": ratios, "threshold": threshold,
               "incoherent": incoherent, "generation": generation},
              title=f"reprlab prefs eval: {result.method}", summary=summary)
    return result
