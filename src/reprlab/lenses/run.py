"""Lens workflows as Python calls that write run directories (the CLI wraps these).

>>> from reprlab.lenses.run import tuned_lens_run, talk_lens_run, talk_explain
>>> tuned_lens_run("toy", "builtin:toy-text", out="runs/tuned")
>>> talk_lens_run("toy", "builtin:toy-text", site="layers.2", tokens=4, out="runs/talk")
>>> talk_explain("runs/talk", ["The Eiffel Tower is in the city of"])
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

import reprlab.distributed as dd
from reprlab.errors import ConfigError, DataError, StoreError
from reprlab.io import read_json, read_lines, write_json
from reprlab.lenses.base import load_lens
from reprlab.lenses.logit import LogitLens
from reprlab.lenses.report import curve_figure, loss_figure, tuned_figure
from reprlab.lenses.talk.data import check_sample_position, describe, dump, load_dump
from reprlab.lenses.talk.evaluate import ECHO_EPOCHS, evaluate_talk
from reprlab.lenses.talk.explanations import file_explanations, lens_explanations, with_context
from reprlab.lenses.talk.facts import (
    landmark_checks,
    names_fact,
    uses_landmark_phrasing,
    world_fact,
)
from reprlab.lenses.talk.lens import TalkativeLens
from reprlab.lenses.talk.splice import read_activation
from reprlab.lenses.talk.train import TalkConfig, train_talk
from reprlab.lenses.tuned.evaluate import evaluate_lenses
from reprlab.lenses.tuned.fit import train_tuned
from reprlab.lenses.tuned.lens import TunedLens
from reprlab.lenses.tuned.train import TunedTrainConfig
from reprlab.lenses.unembed import unembed
from reprlab.models import LoadedModel, as_loaded
from reprlab.report import RunDir
from reprlab.report.rundir import check_out
from reprlab.sites import resolve_sites

logger = logging.getLogger(__name__)

#: the training state a lens run resumes from
STATE = "train_state.safetensors"
PROBE_TEXT = "The Eiffel Tower is in the city of"
PROBE_WORDS = ("paris", "france")


def load_texts(data: Any, limit: int | None = None) -> tuple[list[str], dict]:
    """Texts of a dataset spec, a ``.txt`` file (one text a line) or a list."""
    if isinstance(data, (list, tuple)):
        texts = [str(t) for t in data]
        desc = {"name": "texts", "rows": len(texts)}
    elif isinstance(data, str) and data.endswith(".txt"):
        p = Path(data)
        if not p.exists():
            raise DataError(f"no file {p}; give a .txt file with one text a line or builtin:NAME")
        texts = read_lines(p)  # UTF-8 or one clear line
        desc = {"name": p.name, "rows": len(texts)}
    else:
        from reprlab.capture import Rows

        rows = Rows.from_any(data, require_classes=0)
        texts, desc = rows.texts, rows.describe()
    if limit:
        texts = texts[:limit]
    if not texts:
        raise DataError(f"{data!r} holds no texts")
    return texts, desc


def _split(texts: list[str], eval_frac: float, seed: int) -> tuple[list[str], list[str]]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g).tolist()
    n_eval = max(1, int(round(len(texts) * eval_frac))) if len(texts) > 1 else 0
    ev = [texts[i] for i in order[:n_eval]]
    tr = [texts[i] for i in order[n_eval:]] or ev
    return tr, ev


# -- tuned lens ----------------------------------------------------------------------------
def tuned_lens_run(model: LoadedModel | str, data: Any, out: str | Path = "runs/tuned", *,
                   cfg: TunedTrainConfig | None = None, eval_frac: float = 0.1,
                   limit: int | None = None, device: str = "cpu", progress: bool = True,
                   **overrides: Any) -> dict[str, Any] | None:
    """Train a tuned lens, evaluate it against the logit lens, write a run directory.

    Under ``torchrun`` / ``accelerate launch`` the processes split every micro-batch and end
    with the lens of one process; rank 0 alone evaluates and writes the run. Returns the
    results on rank 0 and ``None`` elsewhere. ``overrides`` set :class:`TunedTrainConfig`
    fields (``steps=50, optimizer="adam"``).
    """
    cfg = replace(cfg or TunedTrainConfig(), **overrides)
    check_out(out, "lens-tuned", asdict(cfg), resumable=STATE)  # before the model loads
    lm = as_loaded(model, device=dd.rank_device(device))
    if not lm.is_causal:
        raise ConfigError(f"a tuned lens reads next-token predictions, and {lm.name} has no "
                          "language-model head; use a causal LM (e.g. --model toy)")
    world = dd.init_from_env(lm.device)
    try:
        return _tuned_run(lm, model, data, Path(out), cfg, eval_frac, limit, progress, world)
    finally:
        dd.shutdown(world)


def _tuned_run(lm: LoadedModel, model: Any, data: Any, out: Path, cfg: TunedTrainConfig,
               eval_frac: float, limit: int | None, progress: bool,
               world: dd.World) -> dict[str, Any] | None:
    texts, desc = load_texts(data, limit)
    if len(texts) < 2:
        raise DataError(f"{data!r} holds {len(texts)} text; the tuned lens needs at least 2 "
                        "(some to train on, some held out to evaluate)")
    train, held = _split(texts, eval_frac, cfg.seed)
    run = None
    if world.main:
        config = dd.with_world({**asdict(cfg), "eval_frac": eval_frac}, world, lm.device)
        run = RunDir.create(out, "lens-tuned", config=config,
                            inputs={"model": lm.identity(), "data": desc}, seed=cfg.seed,
                            resumable=STATE)
    dd.barrier(world)  # the directory exists before any rank looks for a saved state
    lens, history = train_tuned(lm, train, cfg, state_path=out / STATE,
                                progress=progress, world=world)
    if not world.main:
        return None
    lens.save(run.path / "lens")
    run.files += ["lens.safetensors", "lens.json", "train_state.safetensors"]
    rows = evaluate_lenses(lm, {"logit": LogitLens.fit(lm), "tuned": lens}, held,
                           batch_size=cfg.batch_size, max_length=cfg.max_length,
                           progress=progress)
    results = {"layers": rows, "history": history, "eval_texts": len(held),
               "train_texts": len(train), "data": desc, "eval_frac": eval_frac}
    _tuned_report(run, rows, history, results, lm.name, _spec(model, lm), _spec(data, None))
    return results


def _spec(value: Any, lm: LoadedModel | None) -> str | None:
    if isinstance(value, str):
        return value
    return (lm.source or None) if lm is not None else None


def _tuned_report(run: RunDir, rows: list[dict], history: list[dict], results: dict,
                  name: str, model_spec: str | None, data_spec: str | None) -> None:
    run.write_csv("eval.csv", rows)
    if history:
        run.write_csv("history.csv", history)
    run.figure(tuned_figure(rows, ["logit", "tuned"]), "lenses.png",
               "per layer, in bits per token, on held-out text", "Logit vs tuned lens")
    run.table("Per layer (bits per token)", rows)
    worse = [r["layer"] for r in rows[:-1] if r["tuned_kl_bits"] >= r["logit_kl_bits"]]
    summary = ("The tuned lens is closer to the final output than the logit lens at every "
               "layer but the last." if not worse else
               f"The tuned lens is not closer than the logit lens at {', '.join(worse)}.")
    results["tuned_better_everywhere"] = not worse
    run.finish(results, title=f"Tuned lens · {name}", summary=summary,
               extra_manifest={"model_spec": model_spec, "data_spec": data_spec})


def tuned_lens_eval(run_dir: str | Path, data: Any = None, *, device: str = "cpu",
                    limit: int | None = None, progress: bool = True,
                    out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a trained tuned lens again (on ``data``, else the run's held-out texts);
    with ``out``, write a run directory with the table, the plot and a report."""
    run_dir = Path(run_dir)
    if out is not None:  # a finished run is never replaced by its evaluation
        check_out(out, "lens-tuned-eval")
    RunDir.load_results(run_dir)  # refuses unfinished runs
    manifest = read_json(run_dir / "manifest.json")
    _require_workflow(run_dir, manifest, "lens-tuned")
    lm = _model_of(manifest, device)
    lens = load_lens(run_dir / "lens")
    if not isinstance(lens, TunedLens):
        raise StoreError(f"{run_dir} holds a {lens.kind} lens, not a tuned lens")
    cfg = manifest["config"]
    if data is None:
        texts, _ = load_texts(_data_spec(manifest), limit)
        _, texts = _split(texts, cfg.get("eval_frac", 0.1), cfg.get("seed", 0))
    else:
        texts, _ = load_texts(data, limit)
    rows = evaluate_lenses(lm, {"logit": LogitLens.fit(lm), "tuned": lens}, texts,
                           batch_size=cfg.get("batch_size", 8),
                           max_length=cfg.get("max_length", 128), progress=progress)
    res = {"layers": rows, "eval_texts": len(texts), "lens_run": str(run_dir)}
    if out is not None:
        run = RunDir.create(out, "lens-tuned-eval", config={"lens_run": str(run_dir),
                                                             "data": data},
                            inputs={"model": lm.identity()}, seed=cfg.get("seed", 0))
        run.write_csv("eval.csv", rows)
        run.figure(tuned_figure(rows, ["logit", "tuned"]), "lenses.png",
                   "per layer, in bits per token", "Logit vs tuned lens")
        run.table("Per layer (bits per token)", rows)
        run.finish(res, title=f"Tuned lens evaluation · {lm.name}")
    return res


#: the command that reads each lens workflow's runs
_READER = {"lens-tuned": "reprlab lens tuned eval RUN", "lens-talk":
           "reprlab lens talk explain RUN --text ..."}


def _require_workflow(run_dir: Path, manifest: dict, workflow: str) -> None:
    """One line naming the right command when ``run_dir`` is another workflow's run."""
    got = manifest.get("workflow")
    if got == workflow:
        return
    hint = (f"read it with `{_READER[got]}`" if got in _READER else
            f"give a run of `reprlab {workflow.replace('-', ' ')} train`")
    raise StoreError(f"{run_dir} holds a {got} run, not a {workflow} run; {hint}")


def _data_spec(manifest: dict) -> str:
    spec = manifest.get("data_spec")
    if not spec:
        raise StoreError("this run does not record its data; pass --data")
    return spec


def _model_of(manifest: dict, device: str) -> LoadedModel:
    from reprlab.models import load_model

    spec = manifest.get("model_spec") or manifest["inputs"]["model"]["name"]
    lm = load_model(spec, device=device)
    want = manifest["inputs"]["model"]
    if lm.identity()["weights_fingerprint"] != want.get("weights_fingerprint"):
        raise StoreError(f"model {spec!r} is not the one this lens was trained on; "
                         "pass the same --model")
    return lm


# -- talkative lens -----------------------------------------------------------------------
def talk_lens_run(model: LoadedModel | str, data: Any, out: str | Path = "runs/talk", *,
                  cfg: TalkConfig | None = None, store: str | Path | None = None,
                  position: str = "all", max_length: int = 64, limit: int | None = None,
                  best_of: int = 4, device: str = "cpu", progress: bool = True,
                  tuned: str | Path | None = None, explanations: str | Path | None = None,
                  echo_epochs: float = ECHO_EPOCHS, keep_landmark_phrasings: bool = False,
                  **overrides: Any) -> dict[str, Any] | None:
    """Dump activations (or reuse a dump), train, evaluate against the baselines, write a run
    directory.

    Training texts that use the landmark check's phrasings ("X stands in", "X is in the
    country of") are left out (unless ``keep_landmark_phrasings``), so the check runs on
    phrasings the lens never saw. The ``nla`` recipe's warm start reads the top tokens of the
    tuned lens of ``tuned`` (a tuned-lens run) or the explanations of a file.

    Under ``torchrun`` / ``accelerate launch`` the processes split every step's batch and end
    with the lens of one process; rank 0 writes the run. Returns the results on rank 0 and
    ``None`` elsewhere. ``overrides`` set :class:`TalkConfig` fields
    (``site="layers.2", tokens=4, epochs=3``).
    """
    cfg = replace(cfg or TalkConfig(), **overrides)
    if cfg.recipe == "nla" and not tuned and not explanations:
        raise ConfigError("--recipe nla needs warm-start explanations: pass --tuned RUN (a "
                          "`reprlab lens tuned train` run) or --explanations FILE")
    settings = {**asdict(cfg), "position": position, "max_length": max_length,
                "best_of": best_of, "tuned": str(tuned) if tuned else None,
                "explanations": str(explanations) if explanations else None,
                "echo_epochs": echo_epochs}
    check_out(out, "lens-talk", settings, resumable=STATE)  # before the model loads
    lm = as_loaded(model, device=dd.rank_device(device))
    site_name = resolve_sites(lm, cfg.site)
    if len(site_name) != 1:
        raise ConfigError(f"--site names {len(site_name)} sites; give one, e.g. layers.2")
    site_name = site_name[0].name
    tuned_lens = _tuned_of(tuned) if tuned else None
    world = dd.init_from_env(lm.device)
    try:
        texts, desc = load_texts(data, limit)
        left_out = 0
        if not keep_landmark_phrasings:
            kept = [t for t in texts if not uses_landmark_phrasing(t)]
            left_out = len(texts) - len(kept)
            texts = kept
        check_sample_position(lm.tokenizer, texts, position, lm.clamp_length(max_length))
        out = Path(out)
        dump_dir = Path(store) if store else out / "data"
        run = None
        if world.main:  # checked and claimed before anything is written there
            run = RunDir.create(out, "lens-talk", config=dd.with_world(settings, world,
                                                                       lm.device),
                                inputs={"model": lm.identity(), "data": desc}, seed=cfg.seed,
                                resumable=STATE)
            data_ = dump(lm, texts, site_name, dump_dir, position=position, seed=cfg.seed,
                         max_length=lm.clamp_length(max_length), progress=progress)
        dd.barrier(world)
        if not world.main:  # read what rank 0 dumped, writing nothing
            data_ = load_dump(dump_dir, lm)
        expl = None
        if cfg.recipe == "nla":
            expl = (file_explanations(explanations, lm.tokenizer, len(data_), cfg.tokens)
                    if explanations else
                    lens_explanations(lm, tuned_lens, data_, cfg.tokens))
            expl = with_context(data_, expl, cfg.context_slots, quote_last=bool(cfg.inject))
        lens, history, facts = train_talk(lm, data_, cfg, progress=progress, world=world,
                                          state_path=out / STATE, explanations=expl)
        if not world.main:
            return None
        lens.save(out / "lens")
        run.files += ["lens.safetensors", "lens.json", "train_state.safetensors"]
        facts["texts_left_out_for_the_landmark_check"] = left_out
        metrics = _held_out_metrics(lm, lens, data_, facts["eval_indices"], best_of=best_of,
                                    seed=cfg.seed, echo_epochs=echo_epochs)
        examples = explain_rows(lm, lens, [PROBE_TEXT] + _examples(data_, 5),
                                tuned_lens, best_of=best_of)
        probe = examples[0]
        probe["mentions_paris_or_france"] = any(
            w in (probe["explanation"] + " " + probe.get("best_words", "")).lower()
            for w in PROBE_WORDS)
        landmarks = landmark_check(lm, lens, tuned_lens)
        results = {"metrics": metrics, "history": history, "data": describe(data_),
                   "facts": facts, "curves": facts["curves"], "examples": examples,
                   "probe": probe, "landmarks": landmarks}
        _talk_report(run, results, lm.name, cfg, _spec(model, lm), _spec(data, None))
        return results
    finally:
        dd.shutdown(world)


def _tuned_of(tuned: str | Path) -> TunedLens:
    path = Path(tuned)
    lens = load_lens(path / "lens" if path.is_dir() else path)
    if not isinstance(lens, TunedLens):
        raise StoreError(f"{tuned} holds a {lens.kind} lens, not a tuned lens; give a "
                         "`reprlab lens tuned train` run")
    return lens


def landmark_check(lm: LoadedModel, lens: TalkativeLens, tuned: TunedLens | None = None
                   ) -> dict[str, Any]:
    """The explanation at the last token of each held-out landmark prompt, and whether it
    names the landmark's city or country (the toy world's facts; empty for other models).

    Beside it, whether the model's own next token there names it: a lens that reports what
    the model computes is judged on those rows (``share_where_model_names``); on the others
    naming the fact would be the lens's knowledge, not the model's."""
    try:
        checks = landmark_checks()
    except Exception:  # noqa: BLE001 - no toy world: nothing to check
        return {}
    if not checks:
        return {}
    rows = explain_rows(lm, lens, [c["text"] for c in checks], tuned)
    out = []
    for c, r in zip(checks, rows, strict=True):
        own = r["next_token_id"]
        out.append({"text": c["text"], "explanation": r["explanation"], "city": c["city"],
                    "country": c["country"],
                    "names_city_or_country": names_fact(r["ids"], c, lm.tokenizer),
                    "model_says": lm.tokenizer.decode([own]).strip(),
                    "model_names_it": names_fact([own], c, lm.tokenizer),
                    "logit_lens": r.get("logit_lens"), "tuned_lens": r.get("tuned_lens"),
                    "fve": r["fve"]})
    known = [r for r in out if r["model_names_it"]]
    return {"rows": out, "n": len(out),
            "share": sum(r["names_city_or_country"] for r in out) / len(out),
            "share_model": len(known) / len(out), "n_model": len(known),
            "share_where_model_names": (sum(r["names_city_or_country"] for r in known)
                                        / len(known)) if known else float("nan")}


def landmark_line(lmk: dict[str, Any]) -> str:
    """One line on the landmark check: the explanation against the model's own answer."""
    line = (f"the explanation names the right city or country on {lmk['share']:.2f} of "
            f"{lmk['n']} held-out landmark prompts")
    if "n_model" in lmk:
        line += (f"; the model's own next token does on {lmk['share_model']:.2f} "
                 f"({lmk['n_model']}), and on those the explanation names it on "
                 f"{lmk['share_where_model_names']:.2f}")
    return line


def _examples(data: Any, n: int) -> list[str]:
    texts = data.texts
    return [t for t in texts[-n:]] if texts else []


def _talk_report(run: RunDir, results: dict, name: str, cfg: TalkConfig,
                 model_spec: str | None, data_spec: str | None) -> None:
    m = results["metrics"]
    if results["history"]:
        run.write_csv("history.csv", results["history"])
        run.figure(loss_figure(results["history"]), "training.png",
                   "losses, batch FVE and schedules per step", "Training")
    if results.get("curves"):
        run.write_csv("curves.csv", results["curves"])
        run.figure(curve_figure(results["curves"], m), "curves.png",
                   "held-out FVE per epoch: the lens, its shuffled and empty explanations; "
                   "the final baselines as lines", "Learning curves")
    if m:
        nan = float("nan")
        rows = [{"reconstruction": r["name"], "FVE": r["fve"],
                 "FVE 95% low": r.get("fve_lo", nan), "FVE 95% high": r.get("fve_hi", nan),
                 "KL (bits)": r.get("kl_bits", nan)} for r in m["baselines"]]
        run.write_csv("baselines.csv", rows)
        run.table("Reconstruction vs baselines (held-out samples)", rows,
                  f"{m['samples']} held-out samples; the lens explains "
                  f"{m['share_of_lookup_residual']:.3f} of what the current-token lookup "
                  f"leaves; normalised RMSE {m['nrmse']:.3f}; "
                  f"{m['token_usage']['distinct']} distinct tokens")
    lmk = results.get("landmarks") or {}
    if lmk:
        run.write_csv("landmarks.csv", lmk["rows"])
        run.table("Held-out landmark prompts (last token)", lmk["rows"], landmark_line(lmk))
    ex = [{k: v for k, v in r.items() if k not in ("words", "ids", "next_token_id")}
          for r in results["examples"]]
    run.write_csv("examples.csv", ex)
    run.table("Example explanations", ex)
    p = results["probe"]
    look = m.get("fve_lookup", float("nan"))
    echo = m.get("fve_context_echo", float("nan"))
    summary = (f"{cfg.recipe} recipe: FVE {m.get('fve', float('nan')):.3f} on held-out "
               f"activations (current-token lookup {look:.3f}, context echo {echo:.3f}, "
               f"shuffled tokens {m.get('fve_shuffled', float('nan')):.3f}, empty "
               f"{m.get('fve_empty', float('nan')):.3f}). '{PROBE_TEXT}' -> "
               f"'{p['explanation']}' (mentions Paris or France: "
               f"{'yes' if p['mentions_paris_or_france'] else 'no'})"
               + (f"; {landmark_line(lmk)}." if lmk else "."))
    extra = {"model_spec": model_spec, "data_spec": data_spec}
    run.finish(results, title=f"Talkative lens · {name} · {cfg.site}", summary=summary,
               extra_manifest=extra)


def explain_rows(lm: LoadedModel, lens: TalkativeLens, texts: list[str],
                 tuned: TunedLens | None = None, position: int = -1, best_of: int = 1,
                 top_k: int = 3) -> list[dict[str, Any]]:
    """The lens's words for each text beside the logit- and tuned-lens readings there."""
    rows = lens.explain(lm, texts, position=position, best_of=best_of)
    site = resolve_sites(lm, lens.site_name)[0]
    a, _, _ = read_activation(lm, site, texts, position)
    layer = 0 if site.kind == "embed" else (site.layer or 0) + 1
    with torch.no_grad():
        readings = {"logit_lens": unembed(lm, a.to(lm.dtype))}
        if tuned is not None:
            readings["tuned_lens"] = unembed(lm, tuned.transform(a, layer))
    for name, logits in readings.items():
        top = logits.float().softmax(-1).topk(top_k, dim=-1).indices
        for i, r in enumerate(rows):
            r[name] = " ".join(lm.tokenizer.decode([int(t)]).strip() for t in top[i])
    for r in rows:
        fact = world_fact(r["text"])
        if fact is not None:
            r["world_fact"] = fact["answer"]
    return rows


def _held_out_metrics(lm: LoadedModel, lens: TalkativeLens, data: Any, eval_idx: list[int],
                      *, best_of: int, seed: int, echo_epochs: float) -> dict[str, Any]:
    """The lens and every baseline on a run's held-out samples (the baselines that learn
    from data learn from every other sample)."""
    held = set(eval_idx)
    train_idx = [i for i in range(len(data)) if i not in held]
    return evaluate_talk(lm, lens, data, eval_idx, train_idx=train_idx, best_of=best_of,
                         seed=seed, echo_epochs=echo_epochs)


def talk_eval(run_dir: str | Path, *, echo_epochs: float = ECHO_EPOCHS, best_of: int = 4,
              tuned: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a trained talkative lens again on its run's held-out samples (the same dump,
    split and seed): every baseline, the landmark check, and ``eval.json`` in the run
    directory. For judging a saved lens against a baseline trained longer (``echo_epochs``)
    or with more samples (``best_of``) than when it was trained."""
    run_dir = Path(run_dir)
    results = RunDir.load_results(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    _require_workflow(run_dir, manifest, "lens-talk")
    lm = _model_of(manifest, device)
    lens = load_lens(run_dir / "lens", lm=lm)
    data = load_dump(results["data"]["path"], lm)
    metrics = _held_out_metrics(lm, lens, data, results["facts"]["eval_indices"],
                                best_of=best_of, seed=int(manifest.get("seed", 0)),
                                echo_epochs=echo_epochs)
    if not tuned:  # the run's own tuned lens, when it is still where it was
        recorded = manifest.get("config", {}).get("tuned")
        tuned = recorded if recorded and Path(recorded).exists() else None
    out = {"metrics": metrics, "landmarks": landmark_check(lm, lens,
                                                          _tuned_of(tuned) if tuned else None),
           "echo_epochs": echo_epochs, "best_of": best_of}
    write_json(run_dir / "eval.json", out)
    return out


def talk_explain(run_dir: str | Path, texts: list[str], *, position: int | None = None,
                 best_of: int = 1, tuned: str | Path | None = None, device: str = "cpu"
                 ) -> list[dict[str, Any]]:
    """Explain activations of new texts with a trained talkative lens: at ``position`` of
    each text, or (``None``) at every token that is not a special token, one row each with
    ``position``, ``token``, ``explanation`` (the lens's own words), ``fve``, ``kl_bits``,
    the logit (and tuned) lens's top tokens and, for a toy-world prompt at its last token,
    ``world_fact``."""
    run_dir = Path(run_dir)
    RunDir.load_results(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    _require_workflow(run_dir, manifest, "lens-talk")
    lm = _model_of(manifest, device)
    lens = load_lens(run_dir / "lens", lm=lm)
    tl = _tuned_of(tuned) if tuned else None
    if position is not None:
        return explain_rows(lm, lens, texts, tl, position=position, best_of=best_of)
    from reprlab.lenses.talk.data import special_ids

    special = special_ids(lm.tokenizer)
    out = []
    for text in texts:
        ids = lm.encode([text])["input_ids"][0].tolist()
        positions = [p for p, i in enumerate(ids) if i not in special]
        last = positions[-1] if positions else None
        for p in positions:
            r = explain_rows(lm, lens, [text], tl, position=p, best_of=best_of)[0]
            fact = r.pop("world_fact", None)
            row = {"text": text, "position": p, "token": r["token"],
                   "explanation": r["explanation"], "fve": r["fve"], "kl_bits": r["kl_bits"],
                   **{k: r[k] for k in ("logit_lens", "tuned_lens", "best_of", "best_words",
                                        "best_fve")
                      if k in r}}
            if fact is not None and p == last:
                row["world_fact"] = fact
            out.append(row)
    return out


def explain_page(rows: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """A self-contained HTML page of per-token explanations (one table per text)."""
    import html

    from reprlab.io import atomic_write_text

    cols = ["position", "token", "explanation", "fve", "logit_lens", "tuned_lens",
            "world_fact"]
    cols = [c for c in cols if any(c in r for r in rows)]
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;"
             "margin-bottom:2em}td,th{border:1px solid #ccc;padding:3px 8px}"
             "td.num{text-align:right}</style>", f"<h1>{html.escape(title)}</h1>"]
    for text in dict.fromkeys(r["text"] for r in rows):
        parts.append(f"<h2>{html.escape(text)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for r in (r for r in rows if r["text"] == text):
            cells = []
            for c in cols:
                v = r.get(c, "")
                if isinstance(v, float):
                    cells.append(f"<td class='num'>{v:.3f}</td>")
                else:
                    cells.append(f"<td>{html.escape(str(v))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    p = Path(path)
    atomic_write_text(p, "\n".join(parts) + "\n")
    return p
