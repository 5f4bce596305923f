"""`reprlab lens logit | tuned train | tuned eval | talk train | talk explain`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from reprlab.cliutil import opt, require, subcommand
from reprlab.limits import cap


@dataclass
class LogitCommand:
    """Read a text through the logit lens (or a tuned lens) at every layer.

    Example:
      reprlab lens logit --model toy --text "The Eiffel Tower is in the city of"
      reprlab lens logit --model toy --text "..." --tuned runs/tuned --top-k 3
    """

    model: str = opt("toy", help="causal LM: alias, local path or hub name")
    text: str = opt("The Eiffel Tower is in the city of", help="text to read")
    position: int = opt(-1, help="token position to read (negative counts from the end)")
    top_k: int = opt(5, help="tokens shown per layer")
    tuned: str = opt("", help="a tuned-lens run directory: read through its lens instead")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        require(self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        require(bool(self.text.strip()), "--text is empty; give a text to read")


def run_logit(cfg: LogitCommand) -> int:
    from reprlab.lenses.base import load_lens
    from reprlab.lenses.logit import LogitLens, top_tokens
    from reprlab.models import load_model

    lm = load_model(cfg.model, device=cfg.device)
    lens = load_lens(Path(cfg.tuned) / "lens") if cfg.tuned else LogitLens.fit(lm)
    rows = top_tokens(lm, lens, cfg.text, cfg.top_k, cfg.position)
    print(f"{lens.kind} lens of {lm.name}, position {cfg.position} of {cfg.text!r}")
    for r in rows:
        cells = "  ".join(f"{t[:14]:>14} {p:.2f}" for t, p in r["tokens"])
        print(f"  {r['layer']:<10} {cells}")
    return 0


@dataclass
class TunedTrainCommand:
    """Train a tuned lens (one affine translator per layer) and compare it with the logit lens.

    Examples:
      reprlab lens tuned train --model toy --data builtin:toy-text --out runs/tuned
      torchrun --nproc_per_node 2 -m reprlab lens tuned train --model toy --out runs/tuned

    Under torchrun / accelerate launch the processes split every micro-batch (--batch-size
    and --tokens-per-step stay global) and end with the lens of one process.
    """

    model: str = opt("toy", help="causal LM: alias, local path or hub name")
    data: str = opt("builtin:toy-text", help="texts: builtin:NAME, .csv/.jsonl/.parquet, .txt")
    out: str = opt("runs/tuned", help="run directory (resumes an interrupted run there)")
    steps: int = opt(100, help="optimizer steps")
    tokens_per_step: int = opt(4096, help="tokens per optimizer step (micro-batches accumulate)")
    batch_size: int = opt(8, help="texts per micro-batch")
    max_length: int = opt(128, help="truncate texts to this many tokens")
    optimizer: str = opt("sgd", help="sgd (Nesterov momentum 0.9) or adam")
    lr: float | None = opt(None, help="learning rate (default: 1.0 for sgd, 1e-3 for adam)")
    weight_decay: float = opt(1e-3, help="weight decay (pulls translators to the identity)")
    warmup_frac: float = opt(0.1, help="fraction of steps of linear warm-up, then cosine decay")
    eval_frac: float = opt(0.1, help="fraction of texts held out for evaluation")
    limit: int = opt(0, help="use only the first N texts (0 = all)")
    seed: int = opt(0, help="seed for the split and the data order")
    checkpoint_every: int = opt(10, help="save the training state every N steps")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    no_progress: bool = opt(False, help="hide progress bars")

    def __post_init__(self) -> None:
        require(0 < self.eval_frac < 1, f"--eval-frac must lie in (0, 1), got {self.eval_frac}")
        require(self.limit >= 0, f"--limit must be 0 or more, got {self.limit}")
        self.train_config()

    def train_config(self):
        from reprlab.lenses.tuned.train import TunedTrainConfig

        names = {f.name for f in fields(TunedTrainConfig)}
        return TunedTrainConfig(**{k: getattr(self, k) for k in names})


def run_tuned_train(cfg: TunedTrainCommand) -> int:
    from reprlab.lenses.report import console_tuned
    from reprlab.lenses.run import tuned_lens_run

    res = tuned_lens_run(cfg.model, cfg.data, cfg.out, cfg=cfg.train_config(),
                         eval_frac=cfg.eval_frac, limit=cfg.limit or None, device=cfg.device,
                         progress=not cfg.no_progress)
    if res is None:  # another rank of a torchrun job
        return 0
    print(console_tuned(res["layers"], ["logit", "tuned"]))
    print(f"report: {Path(cfg.out) / 'report.html'}")
    return 0


@dataclass
class TunedEvalCommand:
    """KL, cross-entropy and entropy per layer of a trained tuned lens vs the logit lens.

    Example:
      reprlab lens tuned eval runs/tuned
      reprlab lens tuned eval runs/tuned --data other.txt
    """

    run: str = opt(help="a `reprlab lens tuned train` run directory", positional=True)
    data: str = opt("", help="texts to evaluate on (default: the run's held-out texts)")
    out: str = opt("", help="also write the table, plot and report to this run directory")
    limit: int = opt(0, help="use only the first N texts (0 = all)")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    no_progress: bool = opt(False, help="hide progress bars")


def run_tuned_eval(cfg: TunedEvalCommand) -> int:
    from reprlab.lenses.report import console_tuned
    from reprlab.lenses.run import tuned_lens_eval

    res = tuned_lens_eval(cfg.run, cfg.data or None, device=cfg.device, limit=cfg.limit or None,
                          progress=not cfg.no_progress, out=cfg.out or None)
    print(console_tuned(res["layers"], ["logit", "tuned"]))
    if cfg.out:
        print(f"report: {Path(cfg.out) / 'report.html'}")
    return 0


@dataclass
class TalkTrainCommand:
    """Train a talkative (consistency) lens: a decoder LM puts the activation at --site into
    --tokens words, an encoder LM turns them back into the activation, and the model must
    behave the same with the reconstruction spliced in.

    Recipes: consistency (end to end: Gumbel straight-through, loss = w_kl·KL(P_orig ‖
    P_recon) + w_mse·MSE/Var(A) + w_lm·L_lm − w_ent·H) and nla (a warm start on explanations
    that quote the text's last --warm-context tokens, then give the top tokens of a tuned lens,
    --tuned, or of a file, --explanations; then GRPO with reward −normalised MSE and a KL
    penalty to the warm-start decoder). Weights and τ take
    schedules: 0.5, constant:0.5, warmup:1:100, linear:1:0.1:2ep, cosine:1:0.1:3ep.
    Every non-special token position is a sample; held out: the last texts' samples.

    Examples:
      reprlab lens talk train --model toy --site layers.-2 --tokens 4 --out runs/talk
      reprlab lens talk train --model toy --site layers.-2 --recipe nla --tuned runs/tuned
      torchrun --nproc_per_node 2 -m reprlab lens talk train --model toy --site layers.2

    Under torchrun / accelerate launch the processes split every step's --batch-size samples
    and end with the lens of one process.
    """

    model: str = opt("toy", help="target causal LM (frozen)")
    data: str = opt("builtin:toy-text", help="texts: builtin:NAME, .csv/.jsonl/.parquet, .txt")
    site: str = opt("layers.2", help="residual site to explain: embed or layers.N")
    tokens: int = opt(4, help="explanation length t (1-32)")
    recipe: str = opt("consistency", help="consistency (Gumbel straight-through) or nla "
                      "(warm start, then GRPO)")
    out: str = opt("runs/talk", help="run directory (resumes an interrupted run there)")
    store: str = opt("", help="activation dump to create or reuse across runs "
                     "(default: <out>/data)")
    position: str = opt("all", help="samples: all (every non-special token position), or "
                        "one per text: random or an index")
    epochs: float = opt(3.0, help="epochs over the training samples (nla: of GRPO)")
    steps: int = opt(0, help="optimizer steps (0: from --epochs)")
    batch_size: int = opt(32, help="samples per step (split over the processes of a "
                          "torchrun job)")
    lr: float = opt(1e-4, help="AdamW learning rate of the decoder and encoder LMs")
    proj_lr: float = opt(1e-3, help="learning rate of the projections and soft prompts")
    tau: str = opt("cosine:1.0:0.5:3ep", help="Gumbel temperature schedule (floored at 0.1)")
    w_kl: str = opt("1.0", help="weight schedule of the consistency KL")
    w_mse: str = opt("1.0", help="weight schedule of the normalised MSE")
    w_lm: str = opt("0.1", help="weight schedule α of the LM fluency prior")
    w_ent: str = opt("0.0", help="weight schedule of the entropy bonus")
    resample_ablation: bool = opt(False, help="splice Â + (A′ − Â′) with A′ from another text")
    freeze_decoder: bool = opt(False, help="train only the decoder's projection and prompt")
    freeze_encoder: bool = opt(False, help="train only the encoder's projection and prompt")
    decoder: str = opt("", help="decoder/encoder base LM (default: copies of --model)")
    rect_projection: bool = opt(False, help="allow a decoder of another width (learned "
                                "rectangular projections, not identity)")
    no_scale_match: bool = opt(False, help="inject the activation at its own norm (default: "
                               "scaled to the embeddings' norm)")
    warm_epochs: float = opt(8.0, help="nla: epochs of warm start")
    warm_context: int | None = opt(None, help="nla: quote the text's last N tokens in the "
                                   "first N slots of each warm-start explanation (default: "
                                   "half the slots, at most 2)")
    grpo_samples: int = opt(4, help="nla: explanations sampled per activation (K)")
    kl_ref: float = opt(0.01, help="nla: weight of KL(decoder ‖ warm-start decoder)")
    len_penalty: float = opt(0.0, help="nla: reward penalty per share of tokens before a "
                             "stop token")
    reward_kl: float = opt(0.0, help="nla: subtract this × the KL (nats) of the model's "
                           "next token with the reconstruction spliced in from the reward")
    explanations: str = opt("", help="nla: warm-start explanations, one per sample (.txt "
                            "or .jsonl)")
    echo_epochs: float = opt(6.0, help="epochs to train the context-echo baseline's encoder "
                             "(docs/talk-lens.md: 1 epoch understates it by 0.07 FVE)")
    prompt: str = opt("<embed> means", help="decoder prompt with one <embed> marker")
    inject: str = opt("", help="where the decoder takes the activation: '' (its input, at "
                      "the marker), 'site' (the residual after the activation's own block, "
                      "read by the decoder's later blocks as the model reads it) or a site")
    encoder_layer: int | None = opt(None, help="encoder block read (default: the site's)")
    no_kv_cache: bool = opt(False, help="decode naively (recompute the prefix each token)")
    max_length: int = opt(64, help="truncate texts to this many tokens")
    limit: int = opt(0, help="use only the first N texts (0 = all)")
    eval_rows: int = opt(256, help="held-out samples for the metrics (whole texts)")
    curve_rows: int = opt(256, help="held-out samples for the per-epoch curve")
    best_of: int = opt(4, help="K for best-of-K FVE")
    tuned: str = opt("", help="a tuned-lens run: the nla warm start, and its readings "
                     "beside the explanations")
    seed: int = opt(0, help="seed for sampling positions, data order and Gumbel noise")
    checkpoint_every: int = opt(50, help="save the training state every N steps")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    no_progress: bool = opt(False, help="hide progress bars")

    def __post_init__(self) -> None:
        require(self.limit >= 0, f"--limit must be 0 or more, got {self.limit}")
        require(self.best_of >= 1, f"--best-of must be at least 1, got {self.best_of}")
        cap("best_of", self.best_of, "--best-of")
        require(self.position in ("all", "random") or self.position.lstrip("-").isdigit(),
                f"--position must be all, random or a token index, got {self.position!r}")
        cfg = self.talk_config()
        require(cfg.recipe != "nla" or bool(self.tuned or self.explanations),
                "--recipe nla needs warm-start explanations: pass --tuned RUN (a `reprlab lens "
                "tuned train` run) or --explanations FILE")

    def talk_config(self):
        from reprlab.lenses.talk.train import TalkConfig

        names = {f.name for f in fields(TalkConfig)} - {"kv_cache", "encoder_prompt",
                                                        "lm_prefix", "grad_clip",
                                                        "scale_match"}
        return TalkConfig(kv_cache=not self.no_kv_cache, scale_match=not self.no_scale_match,
                          **{k: getattr(self, k) for k in names})


def print_talk_metrics(res: dict) -> None:
    """The lens against its baselines and the landmark check, as the console shows them."""
    m = res["metrics"]
    if m:
        print(f"held-out samples: {m['samples']}; FVE [95% interval over held-out texts] and "
              "KL (bits) with the reconstruction patched in:")
        for r in m["baselines"]:
            ci = f"[{r.get('fve_lo', float('nan')):6.3f}, {r.get('fve_hi', float('nan')):6.3f}]"
            print(f"  {r['name']:<14} FVE {r['fve']:7.3f} {ci}   "
                  f"KL {r.get('kl_bits', float('nan')):.4f}")
        paired = [f"{k[len('fve_minus_'):-len('_ci')]} [{v[0]:+.3f}, {v[1]:+.3f}]"
                  for k, v in m.items() if k.startswith("fve_minus_") and k.endswith("_ci")]
        if paired:
            print("lens minus (paired, 95%): " + ", ".join(paired))
        print(f"share of what the current-token lookup leaves that the lens explains: "
              f"{m['share_of_lookup_residual']:.3f}; {m['token_usage']['distinct']} distinct "
              "tokens")
    lmk = res.get("landmarks") or {}
    if lmk:
        from reprlab.lenses.run import landmark_line

        print(landmark_line(lmk))


def run_talk_train(cfg: TalkTrainCommand) -> int:
    from reprlab.lenses.run import talk_lens_run

    res = talk_lens_run(cfg.model, cfg.data, cfg.out, cfg=cfg.talk_config(),
                        store=cfg.store or None, position=cfg.position,
                        max_length=cfg.max_length, limit=cfg.limit or None,
                        best_of=cfg.best_of, device=cfg.device, progress=not cfg.no_progress,
                        tuned=cfg.tuned or None, explanations=cfg.explanations or None,
                        echo_epochs=cfg.echo_epochs)
    if res is None:  # another rank of a torchrun job
        return 0
    p = res["probe"]
    print_talk_metrics(res)
    print(f"{p['text']!r} -> {p['explanation']!r} (FVE {p['fve']:.3f}; mentions Paris or "
          f"France: {'yes' if p['mentions_paris_or_france'] else 'no'})")
    print(f"report: {Path(cfg.out) / 'report.html'}")
    return 0


@dataclass
class TalkEvalCommand:
    """Evaluate a trained talkative lens again against every baseline, on its run's held-out
    samples (same dump, split and seed), and write eval.json in the run directory.

    Examples:
      reprlab lens talk eval runs/talk
      reprlab lens talk eval runs/talk --echo-epochs 12 --best-of 8
    """

    run: str = opt(help="a `reprlab lens talk train` run directory", positional=True)
    echo_epochs: float = opt(6.0, help="epochs to train the context-echo baseline's encoder")
    best_of: int = opt(4, help="K for best-of-K FVE")
    tuned: str = opt("", help="a tuned-lens run for the landmark table (default: the run's)")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        require(self.echo_epochs >= 0, f"--echo-epochs must be 0 or more, got "
                f"{self.echo_epochs}")
        require(self.best_of >= 1, f"--best-of must be at least 1, got {self.best_of}")
        cap("best_of", self.best_of, "--best-of")


def run_talk_eval(cfg: TalkEvalCommand) -> int:
    from reprlab.lenses.run import talk_eval

    res = talk_eval(cfg.run, echo_epochs=cfg.echo_epochs, best_of=cfg.best_of,
                    tuned=cfg.tuned or None, device=cfg.device)
    print_talk_metrics(res)
    print(f"written: {Path(cfg.run) / 'eval.json'}")
    return 0


@dataclass
class TalkExplainCommand:
    """Put activations of new texts into words with a trained talkative lens.

    Every token of each text (special tokens aside) gets the lens's explanation, its FVE,
    the logit (and tuned) lens's top tokens and, for a toy prompt, the world's fact.

    Examples:
      reprlab lens talk explain runs/talk --text "The Eiffel Tower is in the city of"
      reprlab lens talk explain runs/talk --text "..." --tuned runs/tuned --page explain.html
      reprlab lens talk explain runs/talk --text "..." --json
    """

    run: str = opt(help="a `reprlab lens talk train` run directory", positional=True)
    text: list[str] = opt(factory=list, help="texts to explain (comma-separated)")
    position: int | None = opt(None, help="one token position to explain (negative counts "
                               "from the end; default: every token)")
    best_of: int = opt(1, help="also sample K explanations and keep the best reconstruction")
    tuned: str = opt("", help="a tuned-lens run: show its reading too")
    json: bool = opt(False, help="print a JSON list, one object per position")
    page: str = opt("", help="also write a self-contained HTML page here")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        require(bool(self.text), "give --text \"...\" to explain")
        require(self.best_of >= 1, f"--best-of must be at least 1, got {self.best_of}")
        cap("best_of", self.best_of, "--best-of")


def run_talk_explain(cfg: TalkExplainCommand) -> int:
    from reprlab.lenses.run import talk_explain

    rows = talk_explain(cfg.run, cfg.text, position=cfg.position, best_of=cfg.best_of,
                        tuned=cfg.tuned or None, device=cfg.device)
    if cfg.page:
        from reprlab.lenses.run import explain_page

        explain_page(rows, cfg.page, f"Talkative lens explanations · {cfg.run}")
    if cfg.json:
        import json

        keep = ("position", "token", "explanation", "fve", "kl_bits", "logit_lens",
                "tuned_lens", "world_fact", "text", "best_words", "best_fve")
        print(json.dumps([{k: r[k] for k in keep if k in r} for r in rows], indent=1))
        return 0
    for r in rows:
        where = f"position {r['position']}, " if "position" in r else ""
        print(f"{r['text']!r} at {where}{r['token']!r}")
        print(f"  words:       {r['explanation']}   (FVE {r['fve']:.3f}, KL {r['kl_bits']:.4f} "
              "bits)")
        if "best_words" in r:
            print(f"  best of {r['best_of']}:   {r['best_words']}   (FVE {r['best_fve']:.3f})")
        print(f"  logit lens:  {r['logit_lens']}")
        if "tuned_lens" in r:
            print(f"  tuned lens:  {r['tuned_lens']}")
        if "world_fact" in r:
            print(f"  world fact:  {r['world_fact']}")
    if cfg.page:
        print(f"page: {cfg.page}")
    return 0


def _group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    parser = sub.add_parser(name, help=help, description=help)
    inner = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")

    def show_help(_ns: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    parser.set_defaults(_handler=show_help)
    return inner


def register(subparsers: argparse._SubParsersAction) -> None:
    lens = _group(subparsers, "lens", "read hidden states: logit, tuned and talkative lenses")
    subcommand(lens, "logit", LogitCommand, run_logit, "top tokens per layer (logit lens)")
    tuned = _group(lens, "tuned", "tuned lens: train, eval")
    subcommand(tuned, "train", TunedTrainCommand, run_tuned_train, "train a tuned lens",
               data_parallel=True)
    subcommand(tuned, "eval", TunedEvalCommand, run_tuned_eval, "evaluate a tuned lens")
    talk = _group(lens, "talk", "talkative lens: train, explain")
    subcommand(talk, "train", TalkTrainCommand, run_talk_train, "train a talkative lens",
               data_parallel=True)
    subcommand(talk, "eval", TalkEvalCommand, run_talk_eval,
               "evaluate a trained talkative lens again against its baselines")
    subcommand(talk, "explain", TalkExplainCommand, run_talk_explain,
               "put activations into words")
