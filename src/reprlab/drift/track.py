"""Train and track: checkpoints every k steps with evaluation clouds, resumable.

Two trainers share one layout (see :mod:`reprlab.drift.state`):

* :func:`track_grokking` — the built-in modular-addition task
  (:mod:`reprlab.drift.tasks.grokking`); clouds are the residual stream (and MLP
  activations) at the ``=`` token for a fixed evaluation set of pairs; metrics are loss and
  accuracy on train, test and the non-symmetric test split.
* :func:`track_lm` — fine-tunes any Hugging Face causal LM on a text dataset (a local JSON /
  JSONL / CSV / Parquet file or ``hf:NAME`` such as ``hf:openai/gsm8k:main@train``); at each
  checkpoint the fixed evaluation texts are captured with :func:`reprlab.capture.capture`
  into an activation store (so full weights need not be kept per checkpoint), and eval loss
  and next-token accuracy are logged.

Both save the latest training state at every checkpoint as one file committed by a rename
(:mod:`reprlab.drift.state`); running the same command again after a crash at any point resumes
from there. Each step (epoch) reports its training loss (``loss``), and each checkpoint its
evaluation metrics, through :func:`reprlab.sweeps.progress.report` (sweeps prune on them).
Guarantees by thread count: at one torch thread a resumed run is bit-identical to an
uninterrupted one (history, clouds, weights, optimiser). At several threads, reductions may be
ordered differently from run to run, so two uninterrupted runs can already differ by float
rounding (~1e-7 relative); a resumed run then matches an uninterrupted one to that rounding,
not bit for bit. Pass ``threads=1`` (``--threads 1``) where identity matters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reprlab._threads import num_threads
from reprlab.drift.state import clear_state, load_state, save_state
from reprlab.drift.tasks import grokking as gk
from reprlab.errors import ConfigError, DataError
from reprlab.io import read_json, write_json
from reprlab.sweeps.progress import active
from reprlab.sweeps.progress import report as report_step

logger = logging.getLogger(__name__)


@dataclass
class Tracked:
    """What a tracked run produced: ``steps``, ``history`` (metric dicts), ``clouds``
    (``{site: [T, n, d]}``), ``groups [n]`` (input of each point) and ``sites``."""

    steps: list[int]
    history: list[dict]
    clouds: dict[str, torch.Tensor]
    groups: torch.Tensor
    sites: list[str]
    directory: Path


def _config_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cloud_path(d: Path, step: int) -> Path:
    return d / "clouds" / f"step-{step:07d}.safetensors"


def _save_clouds(path: Path, clouds: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save

    from reprlab.io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().cpu().float().contiguous() for k, v in clouds.items()},
                metadata={k: str(v) for k, v in meta.items()})
    atomic_write_bytes(path, data)


def _prepare(directory: Path, config: dict, resume: bool) -> tuple[list[dict], str]:
    """Check a previous run in ``directory`` matches ``config``; return its history."""
    directory.mkdir(parents=True, exist_ok=True)
    h = _config_hash(config)
    meta = directory / "config.json"
    if meta.exists():
        prev = read_json(meta)
        if prev.get("hash") != h:
            if resume:
                raise ConfigError(f"{directory} holds a tracked run with other settings; use "
                                  "another --out, or --no-resume to start over")
        if not resume:
            clear_state(directory)
            (directory / "history.json").unlink(missing_ok=True)
    write_json(meta, {"hash": h, "config": config})
    hist = read_json(directory / "history.json") if (directory / "history.json").exists() else []
    return hist, h


def track_grokking(cfg: gk.GrokConfig, out: str | Path, *, resume: bool = True,
                   progress: bool = True, threads: int | None = None) -> Tracked:
    """Train the grokking task, saving clouds + metrics every ``cfg.every`` epochs."""
    with num_threads(threads):
        return _track_grokking(cfg, Path(out) / "track", resume, progress)


def _track_grokking(cfg: gk.GrokConfig, d: Path, resume: bool, progress: bool) -> Tracked:
    history, h = _prepare(d, cfg.to_dict(), resume)
    data = gk.make_data(cfg)
    model = gk.build_model(cfg)
    opt, sched = gk.build_optimizer(model, cfg)
    start = 0
    info = load_state(d, model, opt, sched) if resume else None
    if info is not None:
        start = int(info["epoch"])
        history = [m for m in history if m["step"] <= start]
        logger.info("resuming grokking run at epoch %d", start)
    else:
        history = []
    eval_hash = hashlib.sha256(data.tokens[data.eval_idx].numpy().tobytes()).hexdigest()[:16]
    bar = tqdm(total=cfg.epochs, initial=start, desc="grokking", unit="epoch",
               disable=not progress)
    train_loss = None  # of the epoch just taken, reported with the next epoch's numbers
    try:
        for epoch in range(start, cfg.epochs + 1):
            step_metrics = {} if train_loss is None else {"loss": train_loss}
            if epoch % cfg.every == 0 or epoch == cfg.epochs:
                if not history or history[-1]["step"] < epoch:
                    m = {"step": epoch, **gk.evaluate(model, data)}
                    step_metrics.update({k: v for k, v in m.items() if k != "step"})
                    _save_clouds(_cloud_path(d, epoch), gk.eval_clouds(model, data),
                                 {"step": epoch, "eval_hash": eval_hash})
                    history.append(m)
                    write_json(d / "history.json", history)
                    save_state(d, model, opt, sched, {"epoch": epoch, "config_hash": h})
                    bar.set_postfix(train=f"{m['train_acc']:.2f}", test=f"{m['test_acc']:.2f}")
            if step_metrics:
                report_step(epoch, **step_metrics)
            if epoch < cfg.epochs:
                train_loss = gk.train_step(model, data, opt, sched)
                bar.update(1)
    finally:
        bar.close()
    return load_tracked(d)


def load_tracked(directory: str | Path) -> Tracked:
    """Read the clouds and history of a tracked run (grokking layout: ``clouds/``)."""
    from safetensors import safe_open

    d = Path(directory)
    history = read_json(d / "history.json")
    steps = [int(m["step"]) for m in history]
    per_site: dict[str, list[torch.Tensor]] = {}
    hashes = {}
    for s in steps:
        p = _cloud_path(d, s)
        if not p.exists():
            raise DataError(f"clouds for step {s} are missing in {d}; run the same command "
                            "again to finish the run")
        with safe_open(str(p), "pt") as f:
            hashes[s] = f.metadata().get("eval_hash")
            for k in f.keys():
                per_site.setdefault(k, []).append(f.get_tensor(k))
    from reprlab.drift.checkpoints import check_same_inputs

    check_same_inputs(hashes)
    clouds = {k: torch.stack(v) for k, v in per_site.items()}
    n = next(iter(clouds.values())).shape[1]
    return Tracked(steps, history, clouds, torch.arange(n), list(clouds), d)


# -- Hugging Face causal LMs -------------------------------------------------------------

def load_texts(spec: str, *, text_col: str = "text", template: str | None = None,
               limit: int | None = None, **hf_kwargs) -> list[str]:
    """Texts of a dataset file or ``hf:`` spec.

    ``template`` formats each record (``"Question: {question}\\nAnswer: {answer}"``); without
    one, ``text_col`` is used, and records with ``question`` and ``answer`` fields (GSM8K)
    are joined in that format. ``hf_kwargs`` go to ``datasets.load_dataset`` (``hf:`` only),
    e.g. ``load_texts("hf:openai/gsm8k:main@train")``.
    """
    from reprlab.data import readers

    if spec.startswith("builtin:") and template is None:
        from reprlab.data import load_dataset

        return list(load_dataset(spec, limit=limit, require_classes=0).texts)
    if spec.startswith("hf:"):
        records, columns = readers.read_hf(spec, limit=limit, **hf_kwargs)
    else:
        records, columns = readers.read_file(spec)
    records = records[:limit] if limit else records
    if not records:
        raise DataError(f"{spec}: no rows")
    if template is None and text_col not in columns and {"question", "answer"} <= set(columns):
        template = "Question: {question}\nAnswer: {answer}"
    out = []
    for i, r in enumerate(records):
        if template is not None:
            try:
                out.append(template.format(**r))
            except KeyError as exc:
                raise DataError(f"{spec}: row {i} has no field {exc} used in the template; "
                                f"fields are {', '.join(columns)}") from None
            except (ValueError, IndexError, AttributeError) as exc:
                raise DataError(f"--template {template!r} is not a valid format ({exc}); "
                                "name fields in braces, e.g. 'Q: {question} A: {answer}', "
                                "and write a literal brace as {{ or }}") from None
        else:
            if text_col not in r:
                raise DataError(f"{spec}: no column {text_col!r}; columns are "
                                f"{', '.join(columns)} (use --text-col or --template)")
            out.append(str(r[text_col]))
    out = [t for t in out if t.strip()]
    if not out:
        raise DataError(f"{spec}: every text is empty")
    return out


@dataclass
class LMTrackConfig:
    """Settings of :func:`track_lm` (see the CLI ``reprlab drift train`` for help)."""

    steps: int = 200
    every: int = 50
    lr: float = 5e-5
    weight_decay: float = 0.0
    batch_size: int = 8
    max_length: int = 128
    sites: str = "layers.*"
    positions: tuple[str, ...] = ("last", "mean")
    seed: int = 0
    n_eval: int = 64

    def __post_init__(self) -> None:
        if self.steps < 1 or self.every < 1 or self.batch_size < 1:
            raise ConfigError("steps, every and batch size must be positive")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


def _lm_batch(lm, texts: Sequence[str], max_length: int):
    enc = lm.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                       max_length=max_length)
    enc = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc, labels


@torch.no_grad()
def lm_metrics(lm, texts: Sequence[str], max_length: int, batch_size: int = 16) -> dict:
    """Eval loss (mean over predicted tokens) and next-token accuracy."""
    was = lm.model.training
    lm.model.eval()
    tot_loss, tot_ok, tot_n = 0.0, 0, 0
    for s in range(0, len(texts), batch_size):
        enc, labels = _lm_batch(lm, texts[s:s + batch_size], max_length)
        logits = lm.model(**enc).logits[:, :-1].float()
        tgt = labels[:, 1:]
        mask = tgt != -100
        loss = torch.nn.functional.cross_entropy(logits[mask], tgt[mask], reduction="sum")
        tot_loss += float(loss)
        tot_ok += int((logits.argmax(-1)[mask] == tgt[mask]).sum())
        tot_n += int(mask.sum())
    lm.model.train(was)
    if tot_n == 0:
        raise DataError("the evaluation texts have no token to predict; use longer texts")
    return {"eval_loss": tot_loss / tot_n, "next_token_acc": tot_ok / tot_n}


def _order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def track_lm(model, train_texts: Sequence[str], eval_texts: Sequence[str], out: str | Path,
             cfg: LMTrackConfig, *, resume: bool = True, progress: bool = True) -> dict:
    """Fine-tune ``model`` (a :class:`~reprlab.models.LoadedModel` or name) with AdamW on the
    causal-LM loss, capturing ``eval_texts`` at every checkpoint into
    ``<out>/track/stores/step-N``. Returns ``{"steps", "history", "stores"}``."""
    from reprlab.capture import capture
    from reprlab.models import as_loaded

    lm = as_loaded(model)
    if not lm.is_causal:
        raise ConfigError(f"{lm.name} is not a causal LM; drift train fine-tunes causal LMs "
                          "(GPT-2, Llama, Qwen, ...)")
    if len(train_texts) == 0:
        raise DataError("no training texts")
    eval_texts = list(eval_texts)[: cfg.n_eval]
    d = Path(out) / "track"
    ident = lm.identity()
    config = {**asdict(cfg), "model": ident.get("name"),
              "model_config": ident.get("config_hash"),
              "train_hash": hashlib.sha256("\n".join(train_texts).encode()).hexdigest()[:16],
              "eval_hash": hashlib.sha256("\n".join(eval_texts).encode()).hexdigest()[:16]}
    history, h = _prepare(d, config, resume)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(lm.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    info = load_state(d, lm.model, opt, None) if resume else None
    start = int(info["step"]) if info else 0
    history = [m for m in history if m["step"] <= start] if info else []
    n = len(train_texts)
    per_epoch = max(1, math.ceil(n / cfg.batch_size))
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress)
    lm.model.train()
    train_loss = None  # of the step just taken, reported with the next step's numbers
    try:
        for step in range(start, cfg.steps + 1):
            step_metrics = {} if train_loss is None else {"loss": train_loss}
            if step % cfg.every == 0 or step == cfg.steps:
                sdir = d / "stores" / f"step-{step:07d}"
                if not history or history[-1]["step"] < step:
                    m = {"step": step, **lm_metrics(lm, eval_texts, cfg.max_length)}
                    step_metrics.update({k: v for k, v in m.items() if k != "step"})
                    capture(lm, eval_texts, sites=cfg.sites, positions=cfg.positions,
                            out=sdir, max_length=cfg.max_length, progress=False, overwrite=True)
                    lm.model.train()
                    history.append(m)
                    write_json(d / "history.json", history)
                    save_state(d, lm.model, opt, None, {"step": step, "config_hash": h})
                    bar.set_postfix(loss=f"{m['eval_loss']:.3f}")
            if step_metrics:
                report_step(step, **step_metrics)
            if step == cfg.steps:
                break
            epoch, pos = divmod(step, per_epoch)
            idx = _order(n, cfg.seed, epoch)[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
            enc, labels = _lm_batch(lm, [train_texts[i] for i in idx.tolist()], cfg.max_length)
            loss = lm.model(**enc, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if active():  # a device sync, only when something listens
                train_loss = float(loss.detach())
            bar.update(1)
    finally:
        bar.close()
        lm.model.eval()
    steps = [m["step"] for m in history]
    return {"steps": steps, "history": history,
            "stores": {s: str(d / "stores" / f"step-{s:07d}") for s in steps}}
