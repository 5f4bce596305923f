"""Drift workflows: layers, checkpoints, train-and-track (Python API behind the CLI).

>>> run_layers(LayersConfig(model="minilm", data="builtin:cities", out="runs/drift-layers"))
>>> run_checkpoints(CheckpointsConfig(checkpoints=["ckpts/step-*"], data="eval.jsonl", out=...))
>>> run_train(TrainConfig(task="grokking", preset="small", out="runs/grok"))

Each writes a run directory (results.json, CSV tables, PNG figures, report.html, manifest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reprlab.cliutil import opt, require, split_list
from reprlab.drift.checkpoints import check_same_architecture, check_same_inputs, expand
from reprlab.errors import ConfigError, DataError, StoreError
from reprlab.io import read_json

if TYPE_CHECKING:
    import torch

# the configs below build the CLI, which must not import torch or matplotlib: the maths
# (analysis, report, measures) is imported by the functions that run it

logger = logging.getLogger(__name__)

DEFAULT_LAYER_MEASURES = ["sinkhorn", "sliced", "bures", "cka", "procrustes", "displacement"]
DEFAULT_SERIES_MEASURES = ["sinkhorn", "cka", "procrustes", "displacement"]


def _check_common(c) -> None:
    from reprlab.drift.measures import all_measures

    bad = [m for m in c.measures if m not in all_measures()]
    require(not bad, f"unknown measure(s) {', '.join(bad)}; use any of {', '.join(all_measures())}")
    require(c.points >= 0, f"--points must be >= 0 (0 = all), got {c.points}")
    require(c.rel_eps > 0, f"--rel-eps must be positive, got {c.rel_eps}")
    require(c.splits >= 1, f"--splits must be at least 1, got {c.splits}")
    require(c.pca >= 0, f"--pca must be >= 0 (0 = raw space), got {c.pca}")
    require(c.max_iter >= 1, "--max-iter must be positive")


@dataclass
class _Common:
    measures: list[str] = opt(factory=lambda: list(DEFAULT_LAYER_MEASURES),
                              help="measures, with their CPU cost for 7 sites x 1,000 points "
                                   "(21 pairs and 2 floor splits, one core): sinkhorn ~7 s, "
                                   "bures ~2 s, procrustes ~1.5 s, cka ~1 s, sliced <1 s, "
                                   "displacement <0.5 s; emd (exact, on request) grows "
                                   "cubically: ~45 s for one pair at 10k points. Left at "
                                   "the default, checkpoints and train use sinkhorn,cka,"
                                   "procrustes,displacement")
    points: int = opt(1000, help="points per cloud, sampled with --seed (0 = all)")
    pca: int = opt(0, help="compare in one PCA basis fitted on the union of the clouds (0 = raw space)")
    rel_eps: float = opt(0.1, help="Sinkhorn ε relative to the median squared distance")
    tol: float = opt(1e-5, help="Sinkhorn tolerance (L1 marginal violation)")
    max_iter: int = opt(5000, help="Sinkhorn iteration cap (non-convergence is reported)")
    splits: int = opt(2, help="random input halves for the noise floor")
    seed: int = opt(0, help="sampling seed")
    progress: bool = opt(True, help="progress bars")
    threads: int = opt(0, help="torch threads (0 = reprlab's policy: one thread for these "
                               "small batched operations, or REPRLAB_THREADS); on a busy "
                               "2-core machine Bures ran 13x slower at 2 threads than at 1")

    def __post_init__(self) -> None:
        self.measures = split_list(self.measures)
        _check_common(self)


@dataclass
class LayersConfig(_Common):
    """Layer × layer drift within one model: every pair of sites, each distance with its
    split-half noise floor."""

    model: str = opt("minilm", help="model name or path")
    data: str = opt("builtin:cities", help="dataset spec (builtin:NAME, file, hf:NAME)")
    out: str = opt("runs/drift-layers", help="run directory")
    store: str = opt("", help="use this activation store instead of capturing")
    sites: str = opt("embed,layers.*", help="sites to compare")
    position: str = opt("all", help="'all' (every non-padding token) or a pooled position")
    limit: int = opt(0, help="use only the first N rows of the data (0 = all)")
    batch_size: int = opt(32, help="capture batch size")
    device: str = opt("cpu", help="device for capture and maths")


@dataclass
class CheckpointsConfig(_Common):
    """Checkpoint × checkpoint drift per layer and consecutive-checkpoint drift over training.
    Checkpoints (model directories or activation stores) are ordered by step number."""

    checkpoints: list[str] = opt(factory=list, help="checkpoint dirs or stores (globs allowed)")
    data: str = opt("", help="evaluation texts for model checkpoints: a .txt file (one text a "
                             "line), jsonl/json/csv/parquet with a text column (no labels "
                             "needed), builtin:NAME or hf:NAME")
    text_col: str = opt("text", help="text column of --data")
    out: str = opt("runs/drift-checkpoints", help="run directory")
    sites: str = opt("layers.*", help="sites to compare")
    position: str = opt("last", help="'all' or a pooled position (last, mean, ...)")
    limit: int = opt(0, help="use only the first N rows of the data (0 = all)")
    batch_size: int = opt(32, help="capture batch size")
    device: str = opt("cpu", help="device for capture and maths")

    def __post_init__(self) -> None:
        self.checkpoints = split_list(self.checkpoints)
        require(len(self.checkpoints) >= 1, "pass --checkpoints (e.g. 'ckpts/step-*')")
        if split_list(self.measures) == DEFAULT_LAYER_MEASURES:
            self.measures = list(DEFAULT_SERIES_MEASURES)
        super().__post_init__()


@dataclass
class TrainConfig(_Common):
    """Train and track: fine-tune a causal LM (or the built-in grokking task) and measure how
    the representations of a fixed evaluation set move between checkpoints."""

    task: str = opt("", help="built-in task instead of a model: 'grokking'")
    preset: str = opt("small", help="grokking preset: small (groks in minutes on CPU), nanda, tiny")
    epochs: int = opt(0, help="grokking: epochs (0 = the preset's)")
    model: str = opt("", help="causal LM name or path")
    data: str = opt("", help="training texts: file (jsonl/json/csv/parquet) or hf:NAME[:CONFIG][@SPLIT]")
    eval_data: str = opt("", help="evaluation texts (default: the last rows of --data)")
    text_col: str = opt("text", help="text column")
    template: str = opt("", help="format records, e.g. 'Question: {question}\\nAnswer: {answer}'")
    steps: int = opt(200, help="LM: optimisation steps")
    every: int = opt(0, help="checkpoint every N steps/epochs (0 = default)")
    lr: float = opt(0.0, help="learning rate (0 = default)")
    batch_size: int = opt(8, help="LM: batch size")
    max_length: int = opt(128, help="LM: max tokens per text")
    n_eval: int = opt(64, help="LM: evaluation texts captured at each checkpoint")
    sites: str = opt("layers.*", help="LM: sites to capture")
    position: str = opt("last", help="LM: 'all' or a pooled position")
    out: str = opt("runs/drift-train", help="run directory")
    resume: bool = opt(True, help="resume an interrupted run in --out")

    def __post_init__(self) -> None:
        if split_list(self.measures) == DEFAULT_LAYER_MEASURES:
            self.measures = list(DEFAULT_SERIES_MEASURES)
        require(self.task in ("", "grokking"), f"unknown task {self.task!r}; use 'grokking'")
        require(bool(self.task) != bool(self.model),
                "pass either --task grokking or --model M with --data")
        require(bool(self.task) or bool(self.data), "--model needs --data (training texts)")
        require(self.every >= 0 and self.epochs >= 0 and self.steps >= 1,
                "--every, --epochs and --steps must be positive")
        super().__post_init__()


def _opts(c) -> dict:
    return dict(tol=c.tol, max_iter=c.max_iter)


def _sinkhorn_note(res_measures: dict) -> str:
    bad = [name for name, e in res_measures.items() if not e.get("converged", True)]
    return (f"Sinkhorn did not converge for some pairs in {', '.join(bad)}: raise --max-iter or "
            "--rel-eps" if bad else "")


# -- layers ------------------------------------------------------------------------------

def run_layers(c: LayersConfig) -> dict:
    from reprlab._threads import num_threads

    with num_threads(c.threads):
        return _run_layers(c)


def _run_layers(c: LayersConfig) -> dict:
    from reprlab.capture import capture
    from reprlab.drift import analysis as an
    from reprlab.drift import report as rep
    from reprlab.report import RunDir
    from reprlab.store import ActivationStore

    run = RunDir.create(c.out, workflow="drift-layers", config=c, seed=c.seed)
    if c.store:
        store = ActivationStore.open(c.store)
        sites = [s for s in store.sites if s in _expand_sites(store.sites, c.sites)]
    else:
        store = capture(c.model, c.data, sites=c.sites, positions=(c.position,),
                        out=Path(c.out) / "store", batch_size=c.batch_size, device=c.device,
                        progress=c.progress, **({"limit": c.limit} if c.limit else {}))
        sites = store.sites
    if len(sites) < 2:
        raise DataError(f"need at least two sites to compare, got {sites}; widen --sites")
    idx, groups = an.sample_points(store, c.position, c.points, c.seed)
    notes = [n for n in [points_note(_n_points(store, c.position), c.points,
                                     f"The data at position '{c.position}' ")] if n]
    clouds = an.store_clouds(store, sites, c.position, idx, device=c.device)
    res = an.layers_analysis(clouds, sites, groups.to(clouds.device), c.measures, pca=c.pca or None,
                             seed=c.seed, n_splits=c.splits, rel_eps=c.rel_eps,
                             progress=c.progress, **_opts(c))
    headline = rep.layers_headline(res)
    for n in notes:
        logger.info(n)
        run.text("Note", n)
    rep.layer_heatmaps(run, res)
    run.write_csv("pairs.csv", res["rows"])
    table = rep.pairs_table(res)
    run.table(f"Layer pairs (all {len(table)})", table,
              note="Each measure on the full clouds; '÷ floor': the distance between the two "
                   "sites on disjoint input halves divided by the split-half noise floor of "
                   "the two clouds (1 = indistinguishable from sampling noise). pairs.csv "
                   "also has the half-sample values, floors and their spread.")
    note = _sinkhorn_note(res["measures"])
    if note:
        logger.warning(note)
    data = store.manifest.get("data") or {}
    model = store.manifest.get("model") or {}
    results = {"workflow": "drift-layers", "store": str(store.path), "sites": sites,
               "position": c.position, "n_points": int(clouds.shape[1]),
               "n_inputs": int(groups.unique().numel()), "basis": f"pca{c.pca}" if c.pca else "raw",
               "headline": headline, "measures": res["measures"], "notes": notes,
               "warnings": [note] if note else []}
    run.inputs = {"model": model.get("name") or c.model,
                  "data": (data.get("name") if c.store else c.data) or c.data,
                  "sites": ", ".join(sites)}
    run.finish(results, title="reprlab drift: layer × layer",
               summary=f"{headline} {len(sites)} sites, {clouds.shape[1]} points each "
                       f"(position '{c.position}', {results['n_inputs']} inputs, "
                       f"{results['basis']} basis).",
               extra_manifest={"model": store.manifest.get("model"),
                               "data": store.manifest.get("data")})
    return results


def _expand_sites(available: list[str], spec: str) -> list[str]:
    import fnmatch

    want = split_list(spec)
    return [s for s in available if any(fnmatch.fnmatch(s, w) for w in want)]


# -- checkpoints ---------------------------------------------------------------------------

def _is_store(p: Path) -> bool:
    m = p / "manifest.json"
    if not m.exists():
        return False
    try:
        return read_json(m).get("kind") == "activation_store"
    except (OSError, ValueError):
        return False


def load_eval_texts(spec: str, *, text_col: str = "text", limit: int | None = None) -> list[str]:
    """Texts of an evaluation set; labels, if any, are ignored (drift needs none).

    ``.txt``: one text per non-empty line; ``builtin:NAME``: the built-in set's texts; other
    files and ``hf:`` specs: the ``text_col`` column (see :func:`reprlab.drift.track.load_texts`).
    """
    if spec.startswith("builtin:"):
        from reprlab.data import load_dataset

        texts = list(load_dataset(spec, limit=limit, require_classes=0).texts)
    elif spec.lower().endswith(".txt"):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise DataError(f"evaluation file not found: {p}")
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        texts = texts[:limit] if limit else texts
        if not texts:
            raise DataError(f"{p}: no non-empty line to use as a text")
    else:
        from reprlab.drift.track import load_texts

        texts = load_texts(spec, text_col=text_col, limit=limit)
    return texts


def points_note(available: int, requested: int, where: str = "") -> str:
    """A note when fewer points exist than ``--points`` asks for (then all are used)."""
    if not requested or requested <= available:
        return ""
    return (f"{where}holds {available} points, fewer than --points {requested}: all "
            f"{available} are used")


def checkpoint_stores(items: list[tuple[int, Path]], c) -> dict[int, object]:
    """Open (store checkpoints) or capture (model checkpoints) one store per step."""
    from reprlab.capture import capture
    from reprlab.models import load_model
    from reprlab.store import ActivationStore

    stores, configs = {}, {}
    for step, p in items:
        if _is_store(p):
            stores[step] = ActivationStore.open(p)
            configs[step] = {k: stores[step].manifest["model"].get(k)
                             for k in ("hidden_size", "n_layers")}
        elif (p / "config.json").exists():
            configs[step] = read_json(p / "config.json")
        else:
            raise StoreError(f"{p} is neither an activation store nor a model directory "
                             "(no manifest.json or config.json)")
    check_same_architecture(configs)
    texts = None
    for step, p in items:
        if step in stores:
            continue
        if not c.data:
            raise ConfigError("model checkpoints need --data (the evaluation set to capture)")
        if texts is None:
            texts = load_eval_texts(c.data, text_col=getattr(c, "text_col", "text"),
                               limit=c.limit or None)
        lm = load_model(str(p), device=c.device)
        stores[step] = capture(lm, texts, sites=c.sites, positions=(c.position,),
                               out=Path(c.out) / "stores" / f"step-{step:07d}",
                               batch_size=c.batch_size, progress=False)
    check_same_inputs({s: st.manifest.get("data", {}).get("hash") for s, st in stores.items()})
    ref = next(iter(stores.values()))
    for s, st in stores.items():
        if st.ids != ref.ids or st.lengths != ref.lengths:
            raise DataError(f"the evaluation set at step {s} differs from the first checkpoint "
                            "(other rows or tokens); capture every checkpoint on the same inputs")
    return stores


def series_from_stores(stores: dict[int, object], sites_spec: str, position: str,
                       n_points: int, seed: int, device: str = "cpu"
                       ) -> tuple[list[int], dict[str, torch.Tensor], torch.Tensor]:
    import torch

    from reprlab.drift import analysis as an

    steps = sorted(stores)
    first = stores[steps[0]]
    sites = _expand_sites(first.sites, sites_spec) or first.sites
    for s in steps:
        missing = [x for x in sites if x not in stores[s].sites]
        if missing:
            raise DataError(f"checkpoint at step {s} lacks sites {', '.join(missing)}")
    idx, groups = an.sample_points(first, position, n_points, seed)
    clouds = {site: torch.stack([an.store_clouds(stores[s], [site], position, idx)[0]
                                 for s in steps]).to(device) for site in sites}
    return steps, clouds, groups


def _series_report(run, c, steps, clouds, groups, history=None, title="", extra=None,
                   notes=()) -> dict:
    from reprlab.drift import analysis as an
    from reprlab.drift import report as rep

    for note in notes:
        logger.info(note)
        run.text("Note", note)

    res = an.series_analysis(steps, clouds, groups, c.measures, pca=c.pca or None, seed=c.seed,
                             n_splits=c.splits, rel_eps=c.rel_eps, progress=c.progress,
                             **_opts(c))
    curve_pts = an.curve_change_points(history, [k for k in history[0] if k != "step"]) \
        if history else {}
    rep.series_figures(run, res, history, curve_pts)
    run.write_csv("consecutive.csv", res["rows"])
    trans = rep.transitions_table(res)
    if trans:
        run.write_csv("transitions.csv", trans)
        run.table("Strongest upward change point per site and measure", trans)
    if history:
        run.write_csv("history.csv", history)
    unconverged = [r for r in res["rows"] if not r["converged"]]
    warnings = []
    if unconverged:
        warnings.append(f"Sinkhorn did not converge for {len(unconverged)} checkpoint pairs; "
                        "raise --max-iter or --rel-eps")
        logger.warning(warnings[-1])
    headline = rep.series_headline(res)
    results = {"steps": steps, "sites": res["sites"], "curve_change_points": curve_pts,
               "headline": headline,
               "transitions": trans, "history": history or [], "warnings": warnings,
               "notes": list(notes),
               "n_points": int(next(iter(clouds.values())).shape[1]), **(extra or {})}
    return results


def run_checkpoints(c: CheckpointsConfig) -> dict:
    from reprlab._threads import num_threads

    with num_threads(c.threads):
        return _run_checkpoints(c)


def _run_checkpoints(c: CheckpointsConfig) -> dict:
    from reprlab.report import RunDir

    items = expand(c.checkpoints)
    run = RunDir.create(c.out, workflow="drift-checkpoints", config=c, seed=c.seed)
    stores = checkpoint_stores(items, c)
    steps, clouds, groups = series_from_stores(stores, c.sites, c.position, c.points, c.seed,
                                               c.device)
    note = points_note(_n_points(stores[steps[0]], c.position), c.points,
                       f"The evaluation set at position '{c.position}' ")
    results = _series_report(run, c, steps, clouds, groups,
                             extra={"workflow": "drift-checkpoints",
                                    "checkpoints": {s: str(p) for s, p in items}},
                             notes=[note] if note else [])
    first = stores[steps[0]]
    model = first.manifest.get("model") or {}
    run.inputs = {"model": model.get("name") or str(items[0][1]),
                  "data": c.data or (first.manifest.get("data") or {}).get("name", ""),
                  "sites": ", ".join(clouds)}
    run.finish(results, title="reprlab drift: checkpoints",
               summary=f"{results['headline']} {len(steps)} checkpoints (steps "
                       f"{steps[0]}–{steps[-1]}), {len(clouds)} sites, "
                       f"{results['n_points']} points each (position '{c.position}').",
               extra_manifest={"model": first.manifest.get("model"),
                               "data": first.manifest.get("data")})
    return results


# -- train and track -----------------------------------------------------------------------

def run_train(c: TrainConfig) -> dict:
    from reprlab._threads import num_threads

    with num_threads(c.threads):
        return _run_train(c)


def _run_train(c: TrainConfig) -> dict:
    from reprlab._threads import num_threads
    from reprlab.report import RunDir

    run = RunDir.create(c.out, workflow="drift-train", config=c, seed=c.seed)
    if c.task == "grokking":
        return _run_grokking(c, run)
    from reprlab.drift.track import LMTrackConfig, load_texts, track_lm

    texts = load_texts(c.data, text_col=c.text_col, template=c.template or None)
    if c.eval_data:
        eval_texts = load_texts(c.eval_data, text_col=c.text_col, template=c.template or None)
        train_texts = texts
    else:
        if len(texts) < 4:
            raise DataError(f"{c.data} has {len(texts)} texts; need at least 4 to hold some out "
                            "for evaluation (or pass --eval-data)")
        k = min(c.n_eval, max(1, len(texts) // 4))
        train_texts, eval_texts = texts[:-k], texts[-k:]
    pos = c.position
    cfg = LMTrackConfig(steps=c.steps, every=c.every or max(1, c.steps // 10),
                        lr=c.lr or 5e-5, batch_size=c.batch_size, max_length=c.max_length,
                        sites=c.sites, positions=(pos,), seed=c.seed, n_eval=c.n_eval)
    with num_threads(c.threads):
        tracked = track_lm(c.model, train_texts, eval_texts, c.out, cfg, resume=c.resume,
                           progress=c.progress)
    from reprlab.store import ActivationStore

    stores = {s: ActivationStore.open(p) for s, p in tracked["stores"].items()}
    steps, clouds, groups = series_from_stores(stores, c.sites, pos, min(c.points, _n_points(
        stores[min(stores)], pos)) if c.points else 0, c.seed)
    results = _series_report(run, c, steps, clouds, groups, tracked["history"],
                             extra={"workflow": "drift-train", "model": c.model})
    run.inputs = {"model": c.model, "data": c.data, "sites": ", ".join(clouds)}
    run.finish(results, title="reprlab drift: train and track",
               summary=f"{results['headline']} {c.model}: {c.steps} steps, checkpoints every "
                       f"{cfg.every}.",
               extra_manifest={"model": stores[steps[0]].manifest.get("model"),
                               "data": {"name": c.data}})
    return results


def _n_points(store, position: str) -> int:
    return len(store.token_index) if position == "all" else store.n_rows


_CROSS_NAMES = {"train_acc": "train", "test_acc": "test",
                "test_nonsym_acc": "test (pairs whose transpose is not in training)"}


def crossing_phrase(crossings: dict, level: float = 0.5, unit: str = "epoch") -> str:
    """``{"test_acc": 650, "train_acc": None}`` -> "test accuracy reaches 50% at epoch 650;
    train accuracy did not reach 50%" (for the console and the report)."""
    parts = []
    for key, step in crossings.items():
        name = _CROSS_NAMES.get(key, key)
        parts.append(f"{name} accuracy " + (f"reaches {level:.0%} at {unit} {step}"
                                            if step is not None else f"did not reach {level:.0%}"))
    return "; ".join(parts)


def _run_grokking(c: TrainConfig, run) -> dict:
    import torch

    from reprlab.drift import analysis as an
    from reprlab.drift.tasks.grokking import preset
    from reprlab.drift.track import track_grokking

    cfg = preset(c.preset, epochs=c.epochs or None, every=c.every or None, lr=c.lr or None,
                 seed=c.seed)
    tracked = track_grokking(cfg, c.out, resume=c.resume, progress=c.progress,
                             threads=c.threads or None)
    clouds = {k: v for k, v in tracked.clouds.items()}
    n = next(iter(clouds.values())).shape[1]
    if c.points and c.points < n:
        idx, _ = torch.randperm(n, generator=torch.Generator().manual_seed(c.seed))[:c.points].sort()
        clouds = {k: v[:, idx] for k, v in clouds.items()}
    groups = torch.arange(next(iter(clouds.values())).shape[1])
    hist = tracked.history
    cross = {k: an.crossing(hist, k) for k in ("train_acc", "test_acc", "test_nonsym_acc")}
    results = _series_report(run, c, tracked.steps, clouds, groups, hist,
                             extra={"workflow": "drift-train", "task": "grokking",
                                    "grokking_config": cfg.to_dict(),
                                    "acc_crosses_50pct": cross})
    final = hist[-1]
    run.inputs = {"model": f"grokking-{c.preset} (one-layer transformer)",
                  "data": f"modular addition mod {cfg.p}, {cfg.train_frac:.0%} of pairs for "
                          "training", "sites": ", ".join(clouds)}
    run.finish(results, title="reprlab drift: grokking",
               summary=(f"Modular addition p={cfg.p}, {cfg.epochs} epochs: final train accuracy "
                        f"{final['train_acc']:.3f}, test accuracy {final['test_acc']:.3f}; "
                        f"{crossing_phrase(cross)}. {results['headline']}"),
               extra_manifest={"model": {"name": f"grokking-{c.preset}", **cfg.to_dict()},
                               "data": {"name": f"modular-addition-p{cfg.p}"}})
    return results
