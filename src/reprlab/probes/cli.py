"""`reprlab probe` (sweep probes over every layer, with controls, into a report) and
`reprlab probe apply` (score new texts with a saved probe)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from reprlab.cliutil import opt, require, subcommand
from reprlab.errors import ConfigError, StoreError


@dataclass
class ProbeCommand:
    """Train probes for a concept at every layer and see where it is linearly readable.

    Captures the dataset once, fits every family at every site x position together, with
    random-label controls, bootstrap intervals and direction cosines, and writes a report.

    Examples:
      reprlab probe                                   # bundled MiniLM + builtin:cities
      reprlab probe --model Qwen/Qwen2.5-0.5B --data puns.csv --sites "layers.*" \\
          --positions last,mean --probes logistic,mass-mean,mlp --eval builtin:puns-heldout \\
          --out runs/puns
      reprlab probe apply runs/puns --site layers.12 --position last --probe logistic --text "..."
      reprlab probe --backend nnsight --remote --model meta-llama/Llama-3.1-70B \\
          --data puns.csv --sites layers.40 --positions last --epochs 5
    """

    model: str = opt("minilm", help="model alias, local path or hub name")
    data: str = opt("builtin:cities", help="labeled dataset: builtin:NAME, .csv/.json/.jsonl/.parquet, hf:NAME")
    sites: str = opt("", help="sites to probe, e.g. 'layers.*' (default: embed,layers.* when "
                         "capturing; every site of --store)")
    positions: list[str] = opt(factory=list, help="token positions to probe (default: last,mean "
                               "when capturing; every position of --store)")
    probes: list[str] = opt(factory=lambda: ["logistic", "mass-mean"],
                            help="probe families: logistic, mass-mean, mass-mean-iid, mlp")
    eval: list[str] = opt(factory=list, help="out-of-distribution datasets scored by every probe")
    test: str = opt("", help="a held-out test dataset (else a stratified split of --data)")
    store: str = opt("", help="use this existing activation store instead of capturing --data")
    out: str = opt("runs/probe", help="run directory for the report")
    split: list[str] = opt(factory=lambda: ["0.6", "0.2", "0.2"], help="train,val,test fractions")
    folds: int = opt(0, help="k-fold cross-validation (0: automatic, used for <= 100 rows)")
    seed: int = opt(0, help="seed for splits, controls, bootstrap and MLP initialisation")
    l2: float | None = opt(None, help="logistic L2 strength (default: chosen on validation from 1e-4..1)")
    mlp_width: int = opt(64, help="hidden width of MLP probes")
    mlp_weight_decay: float = opt(1e-2, help="AdamW weight decay of MLP probes")
    mlp_epochs: int = opt(300, help="maximum epochs of MLP probes (early stopping on validation)")
    controls: int = opt(1, help="random-label control permutations per layer; several "
                        "average out the luck of one (the mean is reported)")
    no_controls: bool = opt(False, help="skip the random-label control probes")
    bootstrap: int = opt(1000, help="bootstrap resamples for 95%% intervals (0: none)")
    batch_size: int = opt(32, help="rows per forward pass while capturing")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    model_dtype: str = opt("float32", help="dtype to run the model in")
    max_length: int = opt(512, help="truncate texts to this many tokens")
    limit: int = opt(0, help="use only the first N rows of each dataset (0 = all)")
    text_col: str = opt("text", help="text column of a file dataset")
    label_col: str = opt("label", help="label column of a file dataset")
    backend: str = opt("store", help="store: capture once, sweep every layer here (default); "
                       "local or nnsight: train one logistic probe at one site inside a session "
                       "where the model runs")
    remote: bool = opt(False, help="with --backend nnsight: run the session on NDIF (needs "
                       "NDIF_API_KEY); only the probe weights and losses come back")
    ndif_host: str = opt(None, help="NDIF server URL for --remote, e.g. a local NDIF "
                         "http://127.0.0.1:8001 (default: NDIF_HOST, else the public NDIF)")
    epochs: int = opt(5, help="training epochs of a session-trained probe")
    lr: float = opt(1e-2, help="AdamW learning rate of a session-trained probe")
    session_mode: str = opt("session", help="session: the whole loop in one session; steps: "
                            "one session per batch, optimizer step here")
    validate: bool = opt(False, help="steer along the best linear probe's direction and add the "
                         "readout shift and side effects to the report")
    validate_coeffs: str = opt("-8:8:9", help="steering coefficients for --validate, in "
                               "standard deviations of the activations along the direction: "
                               "start:stop:count or a list")
    answers: bool = opt(False, help="score the model's own answers on a dataset with known "
                        "answers (an 'answer' column) beside every probe, on the same test rows")
    validate_rows: int = opt(200, help="--validate steers a seeded, label-balanced sample of "
                             "this many texts at every coefficient (0 = all rows)")
    no_progress: bool = opt(False, help="hide progress bars")

    def __post_init__(self) -> None:
        from reprlab.probes.fitters import check_families

        self.probes = check_families(self.probes)
        try:
            fr = tuple(float(v) for v in self.split)
        except ValueError:
            raise ConfigError(f"--split needs three numbers like 0.6,0.2,0.2, got {self.split}") from None
        require(len(fr) == 3 and all(v > 0 for v in fr),
                f"--split needs three positive fractions like 0.6,0.2,0.2, got {self.split}")
        self.split = list(fr)
        require(self.folds == 0 or self.folds >= 2, f"--folds must be 0 or at least 2, got {self.folds}")
        require(self.controls >= 0, f"--controls must be 0 or more, got {self.controls}")
        require(self.bootstrap >= 0, f"--bootstrap must be 0 or more, got {self.bootstrap}")
        from reprlab.limits import cap

        cap("controls", self.controls, "--controls")
        cap("bootstrap", self.bootstrap, "--bootstrap")
        cap("folds", self.folds, "--folds")
        require(self.l2 is None or self.l2 > 0, f"--l2 must be positive, got {self.l2}")
        require(self.mlp_width >= 1, f"--mlp-width must be at least 1, got {self.mlp_width}")
        require(self.mlp_epochs >= 1, f"--mlp-epochs must be at least 1, got {self.mlp_epochs}")
        require(self.limit >= 0, f"--limit must be 0 or more, got {self.limit}")
        require(self.backend in ("store", "local", "nnsight"),
                f"unknown --backend {self.backend!r}; use store, local or nnsight")
        require(not self.remote or self.backend == "nnsight", "--remote needs --backend nnsight")
        if self.backend != "store":
            require(bool(self.sites) and "*" not in self.sites and "," not in self.sites
                    and ":" not in self.sites,
                    f"--backend {self.backend} trains one probe: give one --sites, e.g. layers.12")
            require(len(self.positions) <= 1, "--backend local/nnsight takes one --positions")
            require(not self.store and not self.validate and not self.eval and not self.test,
                    f"--store, --validate, --eval and --test work with --backend store, not "
                    f"{self.backend}")
            require(self.epochs >= 1 and self.lr > 0, "--epochs must be >= 1 and --lr > 0")
        if self.validate:
            from reprlab.workflows.probe_validate import parse_coeffs

            parse_coeffs(self.validate_coeffs)


def run_probe(cfg: ProbeCommand) -> int:
    if cfg.backend != "store":
        return _run_in_session(cfg)
    from reprlab.probes.report import console_table
    from reprlab.workflows.probe_validate import probe, summary_line

    options = {"mlp": {"width": cfg.mlp_width, "weight_decay": cfg.mlp_weight_decay,
                       "max_epochs": cfg.mlp_epochs}}
    if cfg.l2 is not None:
        options["logistic"] = {"l2": cfg.l2}
    result = probe(cfg.model, cfg.data, sites=cfg.sites or None, positions=cfg.positions or None,
                   probes=cfg.probes, evals=cfg.eval, test=cfg.test or None, out=cfg.out,
                   store=cfg.store or None, split=tuple(cfg.split), folds=cfg.folds or None,
                   seed=cfg.seed, controls=0 if cfg.no_controls else cfg.controls,
                   bootstrap=cfg.bootstrap,
                   options=options, batch_size=cfg.batch_size, device=cfg.device,
                   model_dtype=cfg.model_dtype, max_length=cfg.max_length,
                   limit=cfg.limit or None,
                   data_kwargs={"text_col": cfg.text_col, "label_col": cfg.label_col},
                   progress=not cfg.no_progress, validate=cfg.validate,
                   validate_coeffs=cfg.validate_coeffs, validate_rows=cfg.validate_rows or None,
                   answers=cfg.answers)
    print(console_table(result))
    if cfg.answers:
        from reprlab.workflows.probe_answers import answers_line

        print(answers_line(result))
    if result.validation is not None:
        print(summary_line(result.validation))
    print(f"report: {Path(result.run_dir) / 'report.html'}")
    return 0


def _run_in_session(cfg: ProbeCommand) -> int:
    import sys

    from reprlab.probes.session_run import probe_in_session
    from reprlab.sessions.transport import use_host

    use_host(cfg.ndif_host)

    position: str | int = cfg.positions[0] if cfg.positions else "last"
    if isinstance(position, str) and position.lstrip("-").isdigit():
        position = int(position)
    train, _, test = cfg.split
    res = probe_in_session(cfg.model, cfg.data, site=cfg.sites, position=position,
                           backend=cfg.backend, remote=cfg.remote, mode=cfg.session_mode,
                           epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                           split=(train, test), seed=cfg.seed, bootstrap=cfg.bootstrap,
                           out=cfg.out, limit=cfg.limit or None,
                           data_kwargs={"text_col": cfg.text_col, "label_col": cfg.label_col},
                           progress=not cfg.no_progress,
                           on_log=lambda m: print(m, file=sys.stderr, flush=True))
    print(res["summary"])
    losses = ", ".join(f"{v:.4f}" for v in res["training"]["loss_per_epoch"])
    print(f"training loss per epoch: {losses}")
    print(f"report: {Path(res['run_dir']) / 'report.html'}")
    return 0


@dataclass
class ProbeApplyCommand:
    """Score texts with a probe saved by `reprlab probe` (runs the model of that run).

    Example: reprlab probe apply runs/probe --site layers.4 --position last --probe logistic
             --text "The city of Paris is in France."
    """

    run: str = opt(help="run directory written by `reprlab probe`", positional=True)
    site: str = opt("", help="site of the probe (default: the run's best)")
    position: str = opt("", help="position of the probe (default: the run's best)")
    probe: str = opt("", help="probe family (default: the run's best)")
    text: str = opt("", help="one text to score")
    file: str = opt("", help="a text file with one text per line")
    model: str = opt("", help="model to run (default: the run's model)")
    allow_other_model: bool = opt(False, help="apply the probe to a model other than the run's")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        require(bool(self.text) or bool(self.file), "give --text \"...\" or --file texts.txt")


def apply_probe(cfg: ProbeApplyCommand) -> list[dict]:
    """Score ``cfg``'s texts; returns one dict per text (text, predicted, p_<class>...)."""
    from reprlab.capture import capture
    from reprlab.io import read_json
    from reprlab.models import load_model
    from reprlab.probes.frozen import Probe
    from reprlab.report import RunDir

    run = Path(cfg.run)
    results = RunDir.load_results(run)
    best = results.get("best", {})
    site = cfg.site or best.get("site")
    position = cfg.position or best.get("position")
    family = cfg.probe or best.get("family")
    stem = run / "probes" / f"{site}__{str(position).replace(':', '_')}__{family}"
    if not Path(f"{stem}.json").exists():
        have = sorted(p.name[:-5] for p in (run / "probes").glob("*.json"))
        raise StoreError(f"no probe {site} / {position} / {family} in {run}; saved probes: "
                         f"{', '.join(h.replace('__', ' / ') for h in have[:12])}"
                         f"{' ...' if len(have) > 12 else ''}")
    probe = Probe.load(stem)
    texts = [cfg.text] if cfg.text else []
    if cfg.file:
        from reprlab.io import read_lines

        texts += read_lines(cfg.file, "--file")
    manifest = read_json(run / "manifest.json")
    recorded = manifest.get("inputs", {}).get("model", {})
    model_name = cfg.model or recorded.get("spec") or recorded.get("name")
    if not model_name:
        raise ConfigError(f"{run} does not record its model; pass --model")
    lm = load_model(model_name, device=cfg.device)
    from reprlab.models import identity_mismatch

    why = identity_mismatch(recorded, lm.identity())
    if why and not cfg.allow_other_model:
        raise ConfigError(f"the probe in {run} does not fit this model: {why}; pass "
                          "--allow-other-model to apply it anyway")
    with tempfile.TemporaryDirectory() as tmp:
        store = capture(lm, texts, site, [position], Path(tmp) / "store", progress=False)
        probs = probe(store[site, position].clone())
    rows = []
    for t, p in zip(texts, probs.tolist()):
        row = {"text": t, "predicted": probe.classes[max(range(len(p)), key=p.__getitem__)]}
        row.update({f"p_{c}": v for c, v in zip(probe.classes, p)})
        rows.append(row)
    return rows


def run_apply(cfg: ProbeApplyCommand) -> int:
    rows = apply_probe(cfg)
    for r in rows:
        probs = "  ".join(f"{k[2:]}={v:.3f}" for k, v in r.items() if k.startswith("p_"))
        print(f"{r['predicted']:<10} {probs}  {r['text']}")
    return 0


def register(subparsers) -> None:
    parser = subcommand(subparsers, "probe", ProbeCommand, run_probe,
                        help="train probes at every layer, with controls, into a report")
    nested = parser.add_subparsers(dest="probe_command", metavar="{apply}")
    subcommand(nested, "apply", ProbeApplyCommand, run_apply,
               help="score texts with a saved probe")
