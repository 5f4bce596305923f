"""`reprlab prefs train|eval|compare`: preference training, evaluation across shifts, and
multi-seed comparison of methods."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from reprlab.cliutil import add_dataclass, build, opt, require, split_list, subcommand
from reprlab.errors import ConfigError


def _kv(items: list[str], flag: str) -> dict:
    """``["alpha=1", "sites=layers.3"]`` -> ``{"alpha": 1, "sites": "layers.3"}``."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"{flag} takes key=value pairs, got {item!r}")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


@dataclass
class TrainCommand:
    """Train a preference adapter (LoRA by default) with DPO or another registered method.

    Examples:
      reprlab prefs train --model toy-sft --data builtin:toy-prefs --method dpo --out runs/dpo
      reprlab prefs train --model ./my-sft --data pairs.jsonl --method ipo --lora-r 16 \\
          --lora-targets all-linear --steps 500 --batch-size 8 --grad-accum 4 --out runs/ipo
      reprlab prefs train --data hf:HuggingFaceH4/ultrafeedback_binarized@train_prefs ...

    Killed? Run the same command again: it resumes from the last checkpoint.
    Data-parallel: torchrun --nproc_per_node 2 -m reprlab prefs train ... (or accelerate
    launch); --batch-size is the global micro-batch, which the processes share.
    """

    model: str = opt("toy-sft", help="SFT model: alias, local path or hub name")
    data: str = opt("builtin:toy-prefs", help="preference triples: builtin:NAME, a "
                    ".jsonl/.json/.csv/.parquet file, or hf:NAME[:CONFIG][@SPLIT]")
    method: str = opt("dpo", help="dpo, ipo, cdpo, hinge, robust, simper, rpo (or a "
                      "registered method)")
    method_options: list[str] = opt(factory=list, help="method options as key=value,...")
    beta: float = opt(0.1, help="β of the DPO family (IPO's τ)")
    label_smoothing: float | None = opt(None, help="label flip rate of cdpo/robust "
                                        "(default 0.1)")
    aggregation: str = opt("sum", help="log-probs summed (standard DPO) or per-token mean")
    nll_weight: float | None = opt(None, help="weight of the NLL term on chosen completions "
                                   "(RPO; default 0, rpo: 1)")
    adapter: str = opt("lora", help="lora, oft, boft, hra or ia3")
    lora_r: int = opt(8, help="adapter rank (OFT/HRA r, BOFT block size)")
    lora_alpha: float = opt(16.0, help="LoRA alpha")
    lora_dropout: float = opt(0.0, help="LoRA dropout")
    lora_targets: list[str] = opt(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                  help="module names to adapt, or all-linear")
    rslora: bool = opt(False, help="rank-stabilised LoRA scaling")
    dora: bool = opt(False, help="DoRA (weight-decomposed LoRA)")
    lr: float = opt(5e-4, help="AdamW learning rate")
    weight_decay: float = opt(0.0, help="AdamW weight decay")
    schedule: str = opt("cosine", help="constant, linear or cosine after warm-up")
    warmup_steps: int = opt(0, help="linear warm-up steps")
    steps: int = opt(0, help="optimiser steps (0: from --epochs)")
    epochs: float = opt(4.0, help="passes over the data when --steps is 0")
    batch_size: int = opt(4, help="pairs per micro-batch")
    grad_accum: int = opt(1, help="micro-batches per optimiser step")
    max_grad_norm: float = opt(1.0, help="gradient clipping norm")
    seed: int = opt(0, help="seed of the adapter init and data order")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    model_dtype: str = opt("float32", help="dtype to run the model in")
    max_length: int = opt(512, help="tokens of prompt + completion")
    max_prompt_length: int | None = opt(None, help="cut longer prompts from the left")
    raw_text: bool = opt(False, help="train on plain text when the tokenizer has no chat "
                         "template")
    limit: int | None = opt(None, help="use only the first N pairs")
    ref_cache: str = opt("auto", help="reference cache: auto ($REPRLAB_HOME/refcache), off, "
                         "or a directory")
    save_every: int = opt(50, help="checkpoint every N steps")
    prompt_col: str = opt("prompt", help="prompt column of a file dataset")
    chosen_col: str = opt("chosen", help="chosen column")
    rejected_col: str = opt("rejected", help="rejected column")
    out: str = opt("runs/prefs", help="run directory")
    validate: list[str] = opt(factory=list, help="score these splits (name=spec,...) once "
                              "trained: results.json validation.score, what a sweep tunes on; "
                              "splits named control* only check coherence")
    no_progress: bool = opt(False, help="hide progress bars")

    def __post_init__(self) -> None:
        self.method_options = split_list(self.method_options)
        self.lora_targets = split_list(self.lora_targets)
        require(bool(self.lora_targets), "--lora-targets needs at least one module name")
        from reprlab.prefs.trainer import method_of

        method_of(self.to_config())  # the method and its options, before anything loads

    def to_config(self):
        """The :class:`~reprlab.prefs.config.TrainConfig` of this command line."""
        from reprlab.prefs.config import TrainConfig

        names = {f.name for f in fields(TrainConfig)}
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name in names}
        kw["method_options"] = _kv(self.method_options, "--method-options")
        kw["lora_targets"] = tuple(self.lora_targets)
        kw["progress"] = not self.no_progress
        kw["validate"] = _splits(split_list(self.validate)) or {}
        return TrainConfig(**kw)


def run_train(cfg: TrainCommand) -> int:
    from reprlab.prefs.trainer import train

    res = train(config=cfg.to_config())
    if res.rank != 0:  # another process of a torchrun job: rank 0 reports
        return 0
    f = res.final
    t = res.truncation
    print(f"{res.method['name']}: {res.steps} steps (resumed from {res.resumed_from}); final loss "
          f"{f.get('loss', float('nan')):.4f}, reward accuracy "
          f"{f.get('rewards/accuracies', float('nan')):.2f}, margin "
          f"{f.get('rewards/margins', float('nan')):.3f}")
    print(f"data: {t['kept']}/{t['rows']} pairs kept, {t['prompt_truncated']} prompts and "
          f"{t['completion_truncated']} completions cut, "
          f"{t['dropped_prompt_too_long'] + t['dropped_identical']} dropped")
    r = res.reference
    if r["cached"]:
        print(f"reference: {'cache hit' if r['cache_hit'] else 'computed and cached'} "
              f"({r['cache_path']})")
    v = res.validation
    if v:
        print("validation: " + ", ".join(f"{k} {r['pref_acc']:.3f} (base {r['pref_acc_base']:.3f},"
                                         f" perplexity x{r['ppl_ratio']:.2f})"
                                         for k, r in v["splits"].items())
              + f"; score {v['score']:.3f}" + (" (incoherent)" if v["incoherent"] else ""))
    print(f"report: {Path(res.run_dir) / 'report.html'}")
    return 0


@dataclass
class EvalCommand:
    """Evaluate a trained adapter across distribution shifts, adapter on and off.

    Example: reprlab prefs eval runs/dpo
             reprlab prefs eval runs/dpo --data in-domain=builtin:toy-prefs-in-domain,mine=x.jsonl
    """

    run: str = opt(help="run directory written by `reprlab prefs train`", positional=True)
    data: list[str] = opt(factory=list, help="splits as name=spec,... (default: the toy "
                          "shifts for builtin:toy-prefs, else the training data)")
    model: str = opt("", help="base model (default: the run's); must be the one it was "
                     "trained on")
    limit: int = opt(200, help="pairs per split (0: all)")
    threshold: float = opt(3.0, help="chosen perplexity ratio above which a run is incoherent")
    generate: int = opt(8, help="held-out prompts per split for the greedy generation check")
    batch_size: int = opt(16, help="pairs per forward")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    out: str = opt("", help="output directory (default RUN/eval)")
    no_progress: bool = opt(False, help="hide progress bars")


def _splits(items: list[str]) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = Path(item).stem if not item.startswith(("builtin:", "hf:")) \
                else item.split(":", 1)[1], item
        out[name.strip()] = spec.strip()
    return out


def run_eval(cfg: EvalCommand) -> int:
    from reprlab.prefs.evaluation import evaluate

    res = evaluate(cfg.run, _splits(cfg.data), model=cfg.model or None,
                   limit=cfg.limit or None, threshold=cfg.threshold, generate=cfg.generate,
                   batch_size=cfg.batch_size, device=cfg.device, out=cfg.out or None,
                   progress=not cfg.no_progress)
    print(res.table())
    print(f"report: {Path(cfg.out or Path(cfg.run) / 'eval') / 'report.html'}")
    return 0


@dataclass
class CompareCommand:
    """Compare methods over seeds and shifts: per shift the base row, each method with its
    interval, its paired difference from the base and from the first method (p-values), and
    a best method only where it is significantly above the base and the runner-up.

    Example: reprlab prefs compare runs/dpo runs/ipo --seeds 3 --out runs/compare
    Missing seeds (RUN-seed1, RUN-seed2, ...) are trained with RUN's settings.
    """

    seeds: int = opt(1, help="seeds per method")
    out: str = opt("runs/prefs-compare", help="output run directory")
    metric: str = opt("pref", help="pref (no reference, σ of mean log-prob margin) or reward "
                      "(DPO implicit reward)")
    no_train: bool = opt(False, help="do not train missing seeds (fail instead)")
    reevaluate: bool = opt(False, help="evaluate again even where an evaluation exists")
    bootstrap: int = opt(2000, help="bootstrap resamples")
    level: float = opt(0.95, help="confidence level of intervals and tests")
    against: str = opt("", help="method every other is compared with (default: the first "
                       "run's)")
    pairs: list[str] = opt(factory=list, help="more paired differences as A:B,...")
    limit: int = opt(200, help="pairs per split")
    threshold: float = opt(3.0, help="incoherence threshold of the perplexity ratio")
    generate: int = opt(8, help="prompts per split for the generation check")
    no_progress: bool = opt(False, help="hide progress bars")


def run_compare(cfg: CompareCommand, runs: list[str]) -> int:
    from reprlab.prefs.comparison import compare
    from reprlab.report.rundir import check_out

    check_out(cfg.out, "prefs-compare")  # before any run is trained or evaluated
    pairs = []
    for item in split_list(cfg.pairs):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--pairs takes A:B method pairs, got {item!r}")
        pairs.append((a, b))
    res = compare(runs, seeds=cfg.seeds, out=cfg.out, metric=cfg.metric,
                  train_missing=not cfg.no_train, reevaluate=cfg.reevaluate,
                  bootstrap=cfg.bootstrap, level=cfg.level, against=cfg.against or None,
                  pairs=pairs, progress=not cfg.no_progress,
                  limit=cfg.limit or None, threshold=cfg.threshold, generate=cfg.generate)
    print(res.table())
    print(f"report: {Path(cfg.out) / 'report.html'}")
    return 0


def register(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser("prefs", help="preference training (DPO family) and "
                                   "evaluation across distribution shifts",
                                   description="Preference training with adapters, evaluation "
                                   "across shifts with a coherence guard, and comparisons.")
    nested = parser.add_subparsers(dest="prefs_command", metavar="{train,eval,compare}")
    subcommand(nested, "train", TrainCommand, run_train, help="train a preference adapter",
               data_parallel=True)
    subcommand(nested, "eval", EvalCommand, run_eval, help="evaluate a run across shifts")
    cmp = nested.add_parser("compare", help="compare methods over seeds",
                            description=(CompareCommand.__doc__ or "").strip(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("runs", nargs="+", help="run directories, one per method")
    add_dataclass(cmp, CompareCommand)
    cmp.set_defaults(_handler=lambda ns: run_compare(build(CompareCommand, ns), ns.runs))
