"""The preference-training loop: any registered method, a PEFT adapter, resumable.

``train(model, data, out=..., method="dpo", ...)`` tokenises the data (reporting every cut and
drop), injects the adapter, takes the reference from the cache (or runs it live with the adapter
disabled), and steps AdamW with warm-up + schedule, gradient accumulation and clipping. Every
step is logged to ``train_log.jsonl`` (loss, rewards chosen/rejected/margin/accuracy, log-probs
chosen/rejected, grad norm, learning rate, tokens/s) and reported through
:func:`reprlab.sweeps.progress.report` (sweeps prune on it). The adapter is checkpointed with the
optimiser, scheduler, data position and RNG in one atomic file (:mod:`reprlab.trainstate`), so a
killed run started again with the same command continues where it stopped and ends with the
same adapter as an uninterrupted run. Methods plug in through :mod:`reprlab.prefs.methods`.

Data-parallel under ``torchrun`` / ``accelerate launch`` (:mod:`reprlab.distributed`): each
process takes a contiguous slice of every micro-batch (``--batch-size`` stays the global
micro-batch), weighs its mean loss by its share of the rows, and the gradients are summed over
processes before the method's last ``after_backward`` hook, clipping and the optimiser step, so
every rank takes the step a single process takes on the whole batch. The logged metrics are
the row-weighted means over all processes. Rank 0 computes the reference cache (the others
wait, then read it) and alone writes the run directory; a resumed run reads its state on every
rank.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import reprlab.distributed as dd
from reprlab.errors import ConfigError
from reprlab.io import apply_umask, atomic_write_text
from reprlab.models import LoadedModel, as_loaded
from reprlab.prefs.adapters import AdapterSpec, apply_adapter, trainable
from reprlab.prefs.config import TrainConfig, diff
from reprlab.prefs.data import load_preferences
from reprlab.prefs.forward import forward
from reprlab.prefs.methods import Method, MethodOptions, SeqOutputs, StepContext, build_method
from reprlab.prefs.refcache import ReferenceTable, cached_reference
from reprlab.prefs.repr import model_free_sites
from reprlab.prefs.schedule import make_scheduler
from reprlab.prefs.tokenize import TokenizedPrefs, collate, tokenize_prefs
from reprlab.report.rundir import check_out
from reprlab.sweeps.progress import report as report_step
from reprlab.trainstate import (
    check_loss,
    load_train_state,
    read_train_state,
    save_train_state,
)

logger = logging.getLogger(__name__)

STATE = "state.safetensors"
LOG = "train_log.jsonl"

#: methods whose step reads statistics of the whole micro-batch beyond per-row terms (the
#: gradient projections use the batch's preference direction), so a rank's shard cannot
#: reproduce it; refused under data parallelism (a method may also set ``data_parallel =
#: False`` on itself)
SHARD_DEPENDENT = ("projgrad", "projbp")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run holds (also in ``results.json``)."""

    run_dir: Path
    method: dict
    steps: int
    final: dict
    log: list[dict]
    truncation: dict
    reference: dict
    resumed_from: int
    config: dict = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    checks: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    validation: dict = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.log]


def order_for(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of ``epoch`` (a pure function of seed and epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rows_at(n: int, seed: int, step: int, micro: int, accum: int, batch: int) -> list[int]:
    """Rows of micro-batch ``micro`` of optimiser step ``step`` (resumable data position)."""
    start = (step * accum + micro) * batch
    out, cache = [], {}
    for pos in range(start, start + batch):
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = order_for(n, seed, epoch)
        out.append(cache[epoch][pos % n])
    return out


def _metrics(policy: SeqOutputs, ref: SeqOutputs | None, beta: float) -> dict[str, float]:
    m = {"logps/chosen": policy.chosen_logps.detach().mean().item(),
         "logps/rejected": policy.rejected_logps.detach().mean().item()}
    if ref is not None:
        rc = beta * (policy.chosen_logps.detach() - ref.chosen_logps)
        rr = beta * (policy.rejected_logps.detach() - ref.rejected_logps)
        m.update({"rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
                  "rewards/margins": (rc - rr).mean().item(),
                  "rewards/accuracies": (rc > rr).float().mean().item()})
    return m


def _scalar(v: Any) -> float:
    return float(v.detach().item()) if torch.is_tensor(v) else float(v)


def _global_metrics(parts: list[tuple[dict[str, float], float]], tokens: int, world: dd.World,
                    device: Any) -> tuple[dict[str, float], int]:
    """Per-micro-batch metrics of every rank, each weighted by the rank's share of the rows
    (1 in one process), summed over ranks (one all-reduce) and averaged over the micro-batches
    that report them; and the tokens of all ranks."""
    keys = sorted({k for m, _ in parts for k in m})
    counts = [sum(1 for m, _ in parts if k in m) for k in keys]
    local = [sum(w * m[k] for m, w in parts if k in m) for k in keys] + [float(tokens)]
    total = dd.all_sum_list(local, world, device)
    return {k: v / c for k, v, c in zip(keys, total, counts, strict=False)}, int(total[-1])


#: mean |change| of the summed completion log-probs (nats) against the reference on the last
#: steps below which the adapter is said not to have moved
STILL_NATS = 0.05


def run_checks(log: list[dict], beta: float, method: str) -> tuple[dict, list[str]]:
    """Whether the adapter moved (the policy's log-probs against the reference, last 5 steps)
    and the share of rows whose hidden-state term had no gradient; one line per problem."""
    checks: dict[str, Any] = {}
    warnings: list[str] = []
    tail = log[-5:]
    moves = [max(abs(r["rewards/chosen"]), abs(r["rewards/rejected"])) / beta
             for r in tail if r.get("rewards/chosen") is not None]
    if moves:
        checks["logp_change_nats"] = sum(moves) / len(moves)
        checks["adapter_moved"] = checks["logp_change_nats"] >= STILL_NATS
        if not checks["adapter_moved"]:
            warnings.append(
                f"the adapter did not move: over the last steps the completions' log-probs "
                f"changed by {checks['logp_change_nats']:.3g} nats from the base (< "
                f"{STILL_NATS}); raise --lr or --steps")
    flat = [r["repr/hidden_flat"] for r in log if r.get("repr/hidden_flat") is not None]
    if flat:
        checks["hidden_flat"] = sum(flat) / len(flat)
        if checks["hidden_flat"] > 0.5:
            warnings.append(
                f"the hidden-state term of {method} had zero gradient on "
                f"{checks['hidden_flat']:.0%} of rows: the run trained as its output loss alone "
                "(loosen trust_region, or check beta_hidden and the align method)")
    return checks, warnings


def method_parameters(method: Method) -> list[torch.nn.Parameter]:
    """Trainable parameters of the torch modules a method holds (a ReprPO transform)."""
    out: list[torch.nn.Parameter] = []
    for value in vars(method).values():
        if isinstance(value, torch.nn.Module):
            out += [p for p in value.parameters() if p.requires_grad]
    return out


def check_data_parallel(cfg: TrainConfig, method: Method, world: dd.World) -> None:
    """One clear line for settings a data-parallel run cannot honour."""
    if world.size <= 1:
        return
    if cfg.method in SHARD_DEPENDENT or getattr(method, "data_parallel", True) is False:
        raise ConfigError(f"--method {cfg.method} projects gradients along the whole batch's "
                          "preference direction, which one process's shard does not have; "
                          "train it in one process (without torchrun)")
    if cfg.batch_size < world.size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {world.size} "
                          "processes; it is the global micro-batch that the processes share, "
                          f"so give --batch-size {world.size} or more")
    if (getattr(method, "nll_weight", 0) or 0) > 0:
        logger.warning("the NLL term is a per-token mean over each process's shard; with "
                       "shards of unequal token counts the step differs slightly from one "
                       "process's")


class _Run:
    """The state of one training run (built by :func:`train`)."""

    def __init__(self, cfg: TrainConfig, lm: LoadedModel, tokens: TokenizedPrefs, method: Method,
                 out: Path, identity: dict, adapter_state: dict | None = None,
                 world: dd.World | None = None):
        self.cfg, self.lm, self.tokens, self.method, self.out = cfg, lm, tokens, method, out
        self.identity = identity
        self.world = world or dd.World()
        self._synced: set[int] = set()
        torch.manual_seed(cfg.seed)
        spec = AdapterSpec(cfg.adapter, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                           tuple(cfg.lora_targets), cfg.rslora, cfg.dora,
                           dict(cfg.adapter_options))
        self.peft = apply_adapter(lm.model, spec)
        self.params = trainable(self.peft)
        if adapter_state:
            _load_adapter_state(self.params, adapter_state)
        if not self.params:
            raise ConfigError("the adapter has no trainable parameters; check --adapter and "
                              "--lora-targets")
        self.opt = torch.optim.AdamW([p for _, p in self.params], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        n = len(tokens)
        per_step = cfg.batch_size * cfg.grad_accum
        self.total = cfg.steps or max(1, math.ceil(cfg.epochs * n / per_step))
        self.sched = make_scheduler(self.opt, cfg.schedule, cfg.warmup_steps, self.total)
        self.reference: ReferenceTable | None = None
        self.live_reference_forwards = 0
        self.state: dict[str, Any] = {}

    def adapter_off(self):
        return self.peft.disable_adapter()

    def ref_for(self, rows: list[int], batch: dict) -> SeqOutputs | None:
        if not self.method.needs_reference:
            return None
        if self.reference is not None:
            return self.reference.batch(rows, self.lm.device)
        self.live_reference_forwards += 1
        with torch.no_grad(), self.adapter_off():
            out = forward(self.lm, batch, tuple(self.method.sites), self.method.pool,
                          getattr(self.method, "record", None))
        return SeqOutputs(out.chosen_logps, out.rejected_logps, out.chosen_tokens,
                          out.rejected_tokens, {k: v.detach() for k, v in out.chosen_hidden.items()},
                          {k: v.detach() for k, v in out.rejected_hidden.items()})

    def sync_gradients(self) -> None:
        """Sum the gradients over ranks (each rank's loss was weighted by its share); the
        method's own modules are first made rank 0's the first time they are seen."""
        extra = method_parameters(self.method)
        new = [p for p in extra if id(p) not in self._synced]
        if new:
            dd.broadcast_parameters(new, self.world)
            self._synced.update(id(p) for p in new)
        dd.sum_gradients([p for _, p in self.params] + extra, self.world)

    def step(self, step: int) -> dict[str, Any]:
        cfg, lm, world = self.cfg, self.lm, self.world
        t0, c0 = time.perf_counter(), time.process_time()
        self.peft.train()
        parts, tokens = [], 0
        for micro in range(cfg.grad_accum):
            rows = rows_at(len(self.tokens), cfg.seed, step, micro, cfg.grad_accum, cfg.batch_size)
            share = 1.0
            if world.size > 1:  # this rank's slice of the global micro-batch
                lo, hi = dd.shard_bounds(len(rows), world.rank, world.size)
                share = (hi - lo) / len(rows)
                rows = rows[lo:hi]
            batch = collate(self.tokens, rows, lm.device)
            tokens += int(batch["attention_mask"].sum())
            ref = self.ref_for(rows, batch)
            policy = forward(lm, batch, tuple(self.method.sites), self.method.pool,
                             getattr(self.method, "record", None))
            out = self.method.loss(policy, ref)
            ctx = StepContext(step, micro, micro == cfg.grad_accum - 1, self.peft, self.params,
                              policy, ref, out, self.state)
            self.method.before_backward(ctx)
            (out.loss * share / cfg.grad_accum).backward()  # share: 1 in one process
            if world.size > 1 and ctx.last_micro_batch:
                self.sync_gradients()
            self.method.after_backward(ctx)
            m = {"loss": out.loss.detach().item(),
                 **_metrics(policy, ref, getattr(self.method, "beta", cfg.beta))}
            m.update({k: _scalar(v) for k, v in out.metrics.items()})
            parts.append((m, share))
        metrics, tokens = _global_metrics(parts, tokens, world, lm.device)
        grads = [p for _, p in self.params if p.grad is not None]
        gnorm = torch.nn.utils.clip_grad_norm_(grads, cfg.max_grad_norm) if grads else torch.zeros(())
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = {"step": step + 1, **metrics, "grad_norm": float(gnorm), "lr": lr,
               "tokens": tokens, "seconds": wall, "cpu_seconds": cpu,
               "tokens_per_s": tokens / wall if wall > 0 else None}
        return rec

    def save(self, step: int) -> None:
        info = {"step": step, "config": self.cfg.numeric(), "config_hash": self.cfg.hash(),
                "method": self.method.describe(), "total_steps": self.total}
        save_train_state(self.out / STATE, self.peft, self.opt, self.sched, info,
                         tensors=self.method.state_tensors(), trainable_only=True)


def _load_adapter_state(params: list, state: dict) -> None:
    """Copy initial adapter weights (names as in the PEFT model, or ending like them)."""
    got = 0
    with torch.no_grad():
        for name, p in params:
            match = [k for k in state if k == name or name.endswith(k) or k.endswith(name)]
            if len(match) == 1:
                p.copy_(state[match[0]].to(p.dtype))
                got += 1
    if got != len(params):
        raise ConfigError(f"adapter_state sets {got} of {len(params)} adapter tensors; give "
                          "every trainable tensor (names as in the PEFT model)")


def _portable_adapter_config(adapter_dir: Path) -> None:
    """The adapter's config names its base model as ``$REPRLAB_HOME/...`` when it lies in
    the cache, not by this machine's path."""
    from reprlab.io import portable, read_json, write_json

    path = adapter_dir / "adapter_config.json"
    if path.exists():
        write_json(path, portable(read_json(path)))


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def check_resume(out: Path, cfg: TrainConfig) -> dict | None:
    """The saved state's info when ``out`` holds a resumable run of the same configuration."""
    got = read_train_state(out / STATE)
    if got is None:
        return None
    info = got[1]["info"]
    if info.get("config_hash") != cfg.hash():
        changes = diff(info.get("config", {}), cfg.numeric())
        raise ConfigError(f"{out} holds a run with different settings ({'; '.join(changes[:4])}); "
                          "resume with the same settings, or choose another --out")
    return info


def method_of(cfg: TrainConfig) -> Method:
    """The method of ``cfg`` built with its options (one clear line for unknown names and
    options; no model needed)."""
    from reprlab.sites import check_site_grammar

    method = build_method(cfg.method, MethodOptions(cfg.beta, cfg.label_smoothing,
                                                    cfg.aggregation, cfg.nll_weight,
                                                    dict(cfg.method_options)))
    if getattr(method, "site_spec", None):
        check_site_grammar(method.site_spec)
    return method


def train(model: LoadedModel | str | None = None, data: Any = None, *, out: str | Path = None,
          config: TrainConfig | None = None, on_step: Callable[[dict], None] | None = None,
          adapter_state: dict[str, torch.Tensor] | None = None, **options: Any) -> TrainResult:
    """Train a preference adapter; see :class:`TrainConfig` for ``options``.

    ``model`` is a :class:`LoadedModel` or a name/path; ``data`` a spec, rows or
    :class:`PreferenceTriples`. ``on_step(record)`` is called after every optimiser step.
    ``adapter_state`` sets the adapter's initial weights (e.g. to start from another tool's
    initialisation; a resumed run loads its checkpoint over it).
    Returns a frozen :class:`TrainResult`; the run directory holds the adapter, the log,
    ``results.json``, ``report.html`` and ``manifest.json``. Under ``torchrun`` every rank
    returns the same result (``rank`` tells them apart); only rank 0 writes the directory.
    """
    cfg = config or TrainConfig()
    if isinstance(model, str):
        options.setdefault("model", model)
    elif isinstance(model, LoadedModel):
        options.setdefault("model", model.source or model.name)
    if isinstance(data, str):
        options.setdefault("data", data)
    if out is not None:
        options["out"] = str(out)
    cfg = replace(cfg, **options)
    out = Path(cfg.out)
    check_out(out, "prefs-train", cfg.numeric(), resumable=STATE)  # before anything is touched
    info = check_resume(out, cfg)  # before any expensive work
    method = method_of(cfg)
    prefs = load_preferences(data if data is not None else cfg.data, limit=cfg.limit,
                             prompt_col=cfg.prompt_col, chosen_col=cfg.chosen_col,
                             rejected_col=cfg.rejected_col)
    # loaded now, so that a bad validation set fails before training
    validate = {k: load_preferences(v) for k, v in cfg.validate.items()}
    lm = as_loaded(model if model is not None else cfg.model, device=dd.rank_device(cfg.device),
                   dtype=cfg.model_dtype)
    bind = getattr(method, "bind", None)
    if callable(bind) and model_free_sites(str(getattr(method, "site_spec", ""))) is None:
        torch.manual_seed(cfg.seed)
        bind(lm)  # a site spec that needs the model (layers.0.5:-1) resolved on it
    tokens = tokenize_prefs(lm.tokenizer, prefs, max_length=lm.clamp_length(cfg.max_length),
                            max_prompt_length=cfg.max_prompt_length, raw_text=cfg.raw_text,
                            model_name=lm.name)
    world = dd.init_from_env(lm.device)
    try:
        check_data_parallel(cfg, method, world)
        return _fit(cfg, lm, tokens, prefs, method, out, info, world, on_step, adapter_state,
                    validate)
    finally:
        dd.shutdown(world)


def _fit(cfg: TrainConfig, lm: LoadedModel, tokens: TokenizedPrefs, prefs: Any, method: Method,
         out: Path, info: dict | None, world: dd.World,
         on_step: Callable[[dict], None] | None, adapter_state: dict | None,
         validate: dict[str, Any]) -> TrainResult:
    """The run itself, on every rank (rank 0 alone writes ``out``)."""
    from reprlab.prefs.report import write_train_report
    from reprlab.report import RunDir

    identity = lm.identity()
    rundir = None
    if world.main:
        config = dd.with_world(cfg.numeric() | {"out": str(out)}, world, lm.device)
        rundir = RunDir.create(out, "prefs-train", config,
                               inputs={"model": {**identity, "spec": cfg.model},
                                       "data": prefs.describe()}, seed=cfg.seed,
                                resumable=STATE)
        (out / "manifest.json").unlink(missing_ok=True)  # not complete until finish()
    run = _Run(cfg, lm, tokens, method, out, identity, adapter_state, world)
    if method.needs_reference and cfg.ref_cache != "off":
        root = None if cfg.ref_cache == "auto" else cfg.ref_cache

        def reference() -> ReferenceTable:
            return cached_reference(lm, identity, tokens, tuple(method.sites), root=root,
                                    pooler=method.pool, recorder=getattr(method, "record", None),
                                    pool_id=getattr(method, "pool_id", "mean:completion"),
                                    batch_size=max(cfg.batch_size, 8),
                                    adapter_off=run.adapter_off,
                                    progress=cfg.progress and world.main, data_name=prefs.name)
        if world.main:  # the others wait, then read what rank 0 cached
            run.reference = reference()
        dd.barrier(world)
        if not world.main:
            run.reference = reference()
    start = 0
    if info is not None:
        got = load_train_state(out / STATE, run.peft, run.opt, run.sched)
        run.method.load_state_tensors(got.get("_tensors", {}))
        start = int(got["step"])
        logger.info("resuming %s from step %d of %d", out, start, run.total)
    dd.broadcast_parameters([p for _, p in run.params], world)
    log = _read_log(out / LOG, start)
    dd.barrier(world)  # every rank has read the saved state and log before rank 0 writes
    if world.main:
        _write_log(out / LOG, log)  # drop lines of steps after the last saved state
    bar = tqdm(total=run.total, initial=start, desc=f"prefs {cfg.method}", unit="step",
               disable=not cfg.progress or not world.main)
    try:
        for step in range(start, run.total):
            rec = run.step(step)
            check_loss(rec["loss"], rec["step"], f"prefs {cfg.method}")
            log.append(rec)
            if world.main:
                with open(out / LOG, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                report_step(rec["step"], **{k: v for k, v in rec.items() if k != "step"})
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}",
                            acc=f"{rec.get('rewards/accuracies', float('nan')):.2f}",
                            tok_s=f"{rec['tokens_per_s'] or 0:.0f}")
            if world.main and ((step + 1) % cfg.save_every == 0 or step + 1 == run.total):
                run.save(step + 1)
            if on_step is not None:
                on_step(rec)
    finally:
        bar.close()
    reference = {"cached": run.reference is not None,
                 "cache_hit": bool(run.reference and run.reference.cache_hit),
                 "cache_path": str(run.reference.path) if run.reference and run.reference.path
                 else None,
                 "reference_forwards_this_run": (run.reference.forwards if run.reference else 0)
                 + run.live_reference_forwards,
                 "live_reference_forwards": run.live_reference_forwards}
    checks, warnings = run_checks(log, getattr(method, "beta", cfg.beta), cfg.method)
    if world.main:
        for w in warnings:
            logger.warning(w)
    validation = {}
    if validate and world.main:
        from reprlab.prefs.evaluation import validation_scores

        run.peft.eval()
        validation = {**validation_scores(lm, run.peft, validate, cfg.numeric(),
                                          batch_size=max(cfg.batch_size, 8)),
                      "specs": dict(cfg.validate)}
    result = TrainResult(out, method.describe(), run.total, log[-1] if log else {}, log,
                         tokens.report.to_dict(), reference, start, cfg.numeric(), world.rank,
                         world.size, checks, tuple(warnings), validation)
    if not world.main:
        return result
    _write_log(out / LOG, log)
    adapter_dir = out / "adapter"
    run.peft.save_pretrained(str(adapter_dir))
    _portable_adapter_config(adapter_dir)
    apply_umask(adapter_dir)  # safetensors writes 0600
    write_train_report(rundir, result, cfg, identity)
    return result
