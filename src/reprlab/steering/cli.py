"""``reprlab steer``: fit, apply, validate and export steering vectors.

    reprlab steer vector   --model M --pairs pairs.jsonl --method pca-diff --sites "layers.*" --out vec/
    reprlab steer generate --model M --vector vec/ --site layers.14 --coeffs -4,0,4 --prompt "I think that"
    reprlab steer validate --model minilm --from-probe runs/cities --site layers.3 --coeffs -8:8:9
    reprlab steer export   vec/ --gguf control.gguf
    reprlab steer import   control.gguf --out vec/
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprlab.cliutil import opt, plain, subcommand
from reprlab.errors import ConfigError

# names for --help, kept equal to steering.directions.METHODS (a test checks): building the
# parser must not import torch
METHOD_NAMES = ("mean-diff", "pca-diff", "pca-center", "logistic", "class-mean")


def parse_coeffs(spec: Any) -> list[float]:
    from reprlab.steering.operators import parse_coeffs as parse

    return parse(spec)

# "-4,0,4" and "-8:8:9" are values, not options
_NEG = re.compile(r"^-[\d.].*$")


def _as_int(value: Any, flag: str) -> int | None:
    """Optional ints may arrive as text from the command line."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} needs an integer, got {value!r}") from None


def _coeffs(spec: str) -> list[float]:
    """Parsed coefficients, at most the stated limit (checked before a range is built)."""
    from reprlab.limits import cap, range_count

    n = range_count(spec)
    if n is not None:
        cap("coeffs", n, "--coeffs")
    return [float(c) for c in cap_list(parse_coeffs(spec))]


def cap_list(values: list[float]) -> list[float]:
    from reprlab.limits import cap

    cap("coeffs", len(values), "--coeffs")
    return values


def _check_common(op: str = "add", unit: str = "unit", scope: str = "all") -> None:
    from reprlab.steering.operators import OPERATORS, Scope

    if op not in OPERATORS:
        raise ConfigError(f"--op must be one of {', '.join(OPERATORS)}, got {op!r}")
    if unit not in ("unit", "raw"):
        raise ConfigError(f"--unit must be unit or raw, got {unit!r}")
    Scope.parse(scope)


def _check_threads(n: int) -> None:
    if n < 0:
        raise ConfigError(f"--threads must be 0 (reprlab's policy) or more, got {n}")


def _load_lm(model: str, dtype: str, device: str) -> Any:
    from reprlab.models import load_model

    return load_model(model, dtype=dtype, device=device)


@dataclass
class VectorCmd:
    """Fit a steering vector at every requested site from contrast pairs (or labeled rows),
    reading all sites in one forward pass per batch; writes a vector directory."""

    out: str = opt(help="directory for steering_vector.safetensors + .json")
    model: str = opt("minilm", help="model alias, local path or hub name")
    pairs: str | None = opt(None, help="contrast pairs: jsonl/csv/json/parquet with positive, "
                                       "negative columns, or builtin:pairs-sentiment")
    data: str | None = opt(None, help="labeled binary dataset instead of pairs (label 1 = "
                                      "positive side)")
    method: str = opt("mean-diff", help=f"one of {', '.join(METHOD_NAMES)} (pca = pca-center)")
    sites: str = opt("layers.*", help="sites to fit, e.g. 'layers.*' or 'layers.4,layers.8'")
    position: str = opt("last", help="token read per text: last, first, middle, mean, "
                                     "mean:content or an index")
    batch_size: int = opt(32, help="texts per forward pass")
    limit: int | None = opt(None, help="use only the first N rows")
    dtype: str = opt("float32", help="model dtype")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    no_progress: bool = opt(False, help="hide progress bars")
    threads: int = opt(0, help="torch threads for the forwards (0 = reprlab's policy: one "
                               "thread for small batches, the free cores for big ones, or "
                               "REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        from reprlab.steering.directions import canonical_method

        _check_threads(self.threads)

        self.method = canonical_method(self.method)
        if (self.pairs is None) == (self.data is None):
            raise ConfigError("give exactly one of --pairs (contrast pairs) or --data "
                              "(labeled rows)")
        self.limit = _as_int(self.limit, "--limit")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")


def run_vector(cfg: VectorCmd) -> int:
    from reprlab.data import load_dataset
    from reprlab.steering.fit import SteeringFitter

    if cfg.pairs is not None:
        data = load_dataset(cfg.pairs, kind="pairs", limit=cfg.limit)
    else:
        data = load_dataset(cfg.data, kind="labeled", limit=cfg.limit)
    lm = _load_lm(cfg.model, cfg.dtype, cfg.device)
    fitter = SteeringFitter(lm, cfg.sites, cfg.method, cfg.position, cfg.batch_size,
                            progress=not cfg.no_progress, threads=cfg.threads or None)
    vec = fitter.fit(data, source=str(cfg.pairs or cfg.data))
    vec = type(vec)(vec.directions, vec.scales, model=vec.model, method=vec.method,
                    position=vec.position, source=vec.source,
                    info={**vec.info, "data_hash": data.hash()})
    out = vec.save(cfg.out)
    print(f"{'site':<14}{'scale':>10}{'pair acc':>10}{'mean gap':>11}")
    for site in vec.sites:
        d = vec.info["diagnostics"][site]
        acc = d.get("pair_accuracy")
        print(f"{site:<14}{d['scale']:>10.4g}{(f'{acc:.3f}' if acc is not None else '-'):>10}"
              f"{d['mean_gap']:>11.4g}")
    print(f"steering vector ({vec.method}, {len(vec)} sites, {len(data)} rows) -> {out}")
    return 0


@dataclass
class GenerateCmd:
    """Generate from a causal LM with the vector added, one completion per coefficient."""

    vector: str = opt(help="vector directory (reprlab steer vector) or a .gguf control vector")
    prompt: str | None = opt(None, help="prompt text (several: --prompts-file)")
    model: str = opt("minilm", help="causal LM alias, local path or hub name")
    site: list[str] = opt(factory=list, help="site(s) to steer; default: every site of the "
                                             "vector")
    coeffs: str = opt("-4,0,4", help="coefficients: list -4,0,4 or start:stop:count -8:8:9")
    prompts_file: str | None = opt(None, help="text file with one prompt per line")
    op: str = opt("add", help="add, ablate or set")
    unit: str = opt("unit", help="unit (coefficient x unit direction) or raw (x mean-diff norm)")
    scope: str = opt("all", help="all, generated (new tokens only) or from:N")
    preserve_norm: bool = opt(False, help="rescale edited tokens to their original norm")
    max_new_tokens: int = opt(40, help="tokens to generate")
    sample: bool = opt(False, help="sample instead of greedy decoding")
    temperature: float = opt(1.0, help="sampling temperature")
    top_p: float = opt(1.0, help="nucleus sampling mass")
    seed: int = opt(0, help="random seed (same stream for every coefficient)")
    out: str | None = opt(None, help="also write the completions as JSON lines here")
    allow_other_model: bool = opt(False, help="use a vector fitted on another model")
    dtype: str = opt("float32", help="model dtype")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    threads: int = opt(0, help="torch threads for the forwards (0 = reprlab's policy: one "
                               "thread for small batches, the free cores for big ones, or "
                               "REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        from reprlab.limits import cap

        _check_threads(self.threads)
        _coeffs(self.coeffs)
        _check_common(self.op, self.unit, self.scope)
        if not self.prompt and not self.prompts_file:
            raise ConfigError("give --prompt or --prompts-file")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        cap("max_new_tokens", self.max_new_tokens, "--max-new-tokens")
        if self.sample and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be a positive number with --sample, got "
                              f"{self.temperature}; drop --sample for greedy decoding")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must lie in (0, 1], got {self.top_p}")


def _check_prompt_lengths(lm: Any, prompts: list[str], max_new_tokens: int) -> None:
    """Prompt plus new tokens must fit the model's positions."""
    limit = lm.position_limit
    if limit is None:
        return
    for i, text in enumerate(prompts):
        n = len(lm.tokenizer(text)["input_ids"])
        if n + max_new_tokens > limit:
            raise ConfigError(f"prompt {i + 1} is {n} tokens; with --max-new-tokens "
                              f"{max_new_tokens} that is more than the {limit} positions "
                              f"{lm.name} takes: shorten the prompt or lower --max-new-tokens")


def _load_vector(path: str) -> Any:
    from reprlab.steering.vector import SteeringVector

    if str(path).endswith(".gguf"):
        from reprlab.steering.gguf_io import import_gguf

        return import_gguf(path)
    return SteeringVector.load(path)


def run_generate(cfg: GenerateCmd) -> int:
    from reprlab.io import atomic_write_text, read_lines
    from reprlab.limits import cap
    from reprlab.steering.generate import generate

    prompts = [cfg.prompt] if cfg.prompt else []
    if cfg.prompts_file:
        prompts += read_lines(cfg.prompts_file, "prompts file")
    cap("prompts", len(prompts), "--prompts-file")
    vec = _load_vector(cfg.vector)
    lm = _load_lm(cfg.model, cfg.dtype, cfg.device)
    _check_prompt_lengths(lm, prompts, cfg.max_new_tokens)
    rows = generate(lm, vec, prompts, cfg.coeffs, sites=cfg.site or None, op=cfg.op,
                    unit=cfg.unit, scope=cfg.scope, preserve_norm=cfg.preserve_norm,
                    max_new_tokens=cfg.max_new_tokens, sample=cfg.sample,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                    allow_other_model=cfg.allow_other_model, threads=cfg.threads or None)
    for r in rows:
        print(f"[{r['coeff']:+g}] {r['prompt']}{r['completion']}")
    if cfg.out:
        atomic_write_text(cfg.out, "".join(json.dumps(r) + "\n" for r in rows))
    return 0


@dataclass
class ValidateCmd:
    """Sweep steering coefficients and measure readout shift, answer probabilities and side
    effects with 95% intervals; writes results.json, CSV, PNG plots and report.html."""

    model: str = opt("minilm", help="model alias, local path or hub name")
    vector: str | None = opt(None, help="steering vector directory or .gguf")
    from_probe: str | None = opt(None, help="probe run directory (or safetensors with a "
                                            "direction per site): steer along its direction")
    site: str | None = opt(None, help="site to steer (default: the probe run's best layer)")
    readout: str | None = opt(None, help="probe run/safetensors whose probe scores the texts "
                                         "(default: --from-probe)")
    readout_site: str | None = opt(None, help="site of the readout probe (same or later "
                                              "layer; default: the next probed site after "
                                              "--site, else --site)")
    coeffs: str = opt("-8:8:9", help="coefficients: list -4,0,4 or start:stop:count -8:8:9")
    data: str | None = opt(None, help="texts for the readout (labeled dataset spec; default: "
                                      "the probe run's dataset)")
    pairs: str | None = opt(None, help="contrast pairs sharing a prompt (A/B answers) for "
                                       "answer probabilities (causal LMs)")
    answers: str | None = opt(None, help="dataset with known answers (labeled with an "
                                         "'answer' column, or preference triples: prompt, "
                                         "chosen = right answer) for answer accuracy "
                                         "(causal LMs)")
    neutral: str | None = opt(None, help="text file, one neutral text per line, for side "
                                         "effects (default: built-in sentences)")
    no_side_effects: bool = opt(False, help="skip loss/KL side-effect measurements")
    op: str = opt("add", help="add, ablate or set")
    unit: str = opt("sd", help="coefficient unit: sd (standard deviations of the activations' "
                               "projection on the direction at the site, measured on the texts), "
                               "unit (x unit direction) or raw (x mean-diff norm)")
    scope: str = opt("all", help="all or from:N")
    preserve_norm: bool = opt(False, help="rescale edited tokens to their original norm")
    limit: int | None = opt(200, help="use at most N rows of --data / --pairs")
    batch_size: int = opt(16, help="texts per forward pass")
    seed: int = opt(0, help="seed for bootstrap intervals")
    out: str = opt("runs/steer-validate", help="run directory")
    allow_other_model: bool = opt(False, help="use a vector fitted on another model")
    dtype: str = opt("float32", help="model dtype")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    no_progress: bool = opt(False, help="hide progress bars")
    threads: int = opt(0, help="torch threads for the forwards (0 = reprlab's policy: one "
                               "thread for small batches, the free cores for big ones, or "
                               "REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        _check_threads(self.threads)
        _coeffs(self.coeffs)
        _check_common(self.op, "unit" if self.unit == "sd" else self.unit, self.scope)
        if (self.vector is None) == (self.from_probe is None):
            raise ConfigError("give exactly one of --vector or --from-probe")
        self.limit = _as_int(self.limit, "--limit")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be >= 1")


def _probe_data_spec(run_dir: str) -> str | None:
    """The dataset a probe run was trained on, from its manifest (when recorded)."""
    p = Path(run_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        man = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    for section in (man.get("inputs") or {}, man.get("config") or {}):
        for key in ("data", "dataset", "data_spec"):
            v = section.get(key)
            if isinstance(v, dict):
                # reprlab probe records {"name": spec, "hash", "rows"}; a store has no texts
                spec = v.get("spec") or v.get("name")
                if isinstance(spec, str) and spec and not spec.startswith("store:"):
                    return spec
                continue
            if isinstance(v, str):
                return v
    return None



def _probe_model(run_dir: str) -> dict:
    """The model identity a probe run recorded (empty when it recorded none)."""
    p = Path(run_dir) / "manifest.json"
    try:
        man = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
    model = (man.get("inputs") or {}).get("model") if isinstance(man, dict) else None
    return dict(model) if isinstance(model, dict) else {}


def _next_site(readouts: dict, site: str) -> str:
    """The probed site after ``site``: read there, since a readout at the steered site itself
    moves linearly with the coefficient by construction."""
    order = list(readouts)
    i = order.index(site) if site in order else -1
    return order[i + 1] if 0 <= i < len(order) - 1 else site


def run_validate(cfg: ValidateCmd) -> int:
    from reprlab.data import load_dataset
    from reprlab.steering.readout import load_readouts, pick
    from reprlab.steering.validate import best_site, run_validation
    from reprlab.steering.vector import SteeringVector

    readouts = None
    if cfg.from_probe or cfg.readout:
        readouts = load_readouts(cfg.readout or cfg.from_probe)
    if cfg.from_probe:
        site = cfg.site
        if site is None:
            res_path = Path(cfg.from_probe) / "results.json"
            results = json.loads(res_path.read_text()) if res_path.is_file() else {}
            site = best_site(results, readouts)
        r = pick(readouts, site)
        vec = SteeringVector({site: r.unit}, {site: r.scale or 1.0}, method="probe",
                             position=r.position, source=str(cfg.from_probe),
                             model=_probe_model(cfg.from_probe))
    else:
        vec = _load_vector(cfg.vector)
        site = cfg.site or (vec.sites[0] if len(vec) == 1 else None)
        if site is None:
            raise ConfigError(f"the vector has {len(vec)} sites; pick one with --site")
    lm = _load_lm(cfg.model, cfg.dtype, cfg.device)
    from reprlab.sites import resolve_sites

    (site_obj,) = resolve_sites(lm, site)
    readout = None
    texts = None
    data_info = None
    if readouts is not None:
        readout = pick(readouts, cfg.readout_site or _next_site(readouts, site_obj.name))
        spec = cfg.data or (_probe_data_spec(cfg.from_probe) if cfg.from_probe else None)
        if spec is None:
            raise ConfigError("readout shift needs texts: pass --data (the probe's dataset)")
        ds = load_dataset(spec, kind="labeled", limit=cfg.limit)
        texts = ds.texts
        data_info = {"name": spec, "hash": ds.hash(), "rows": len(texts)}
        cfg.data = spec
    pairs = load_dataset(cfg.pairs, kind="pairs", limit=cfg.limit) if cfg.pairs else None
    answers = None
    if cfg.answers:
        from reprlab.answers import load_known

        answers = load_known(cfg.answers, limit=cfg.limit)
    neutral = None
    if cfg.neutral:
        from reprlab.io import read_lines

        neutral = read_lines(cfg.neutral, "neutral text file")
    results = run_validation(
        lm, vec, site_obj.name, cfg.coeffs, cfg.out, config=vars(cfg).copy(),
        inputs={"data": data_info, "pairs": cfg.pairs,
                "pairs_hash": pairs.hash() if pairs is not None else None},
        texts=texts, readout=readout, pairs=pairs, neutral=neutral, answers=answers,
        side_effects=not cfg.no_side_effects, op=cfg.op, unit=cfg.unit, scope=cfg.scope,
        preserve_norm=cfg.preserve_norm, batch_size=cfg.batch_size, seed=cfg.seed,
        progress=not cfg.no_progress, allow_other_model=cfg.allow_other_model,
        threads=cfg.threads or None)
    coeffs = results["coeffs"]
    read = f", read by the probe at {readout.site}" if readout is not None else ""
    print(f"steering {lm.name} at {results['site']} ({cfg.op}, {cfg.unit}){read}; "
          f"means over examples (95% intervals in results.json and the report)")
    print(f"{'metric':<20}" + "".join(f" {c:>10g}" for c in coeffs) + f" {'spearman':>9}")
    from reprlab.report.fmt import num
    from reprlab.steering.validate import causal_headline

    for name, m in results["metrics"].items():
        scale = max(abs(v) for v in m["mean"])  # float noise at coefficient 0 prints as 0
        print(f"{name:<20}" + "".join(f" {num(v, 4, scale):>10}" for v in m["mean"])
              + f" {m['spearman']:>9.2f}")
    print(causal_headline(results))
    if results.get("coherent") is not None:
        bad = [c for c, ok in zip(coeffs, results["coherent"]) if not ok]
        print(f"coherence guard (neutral-text perplexity <= {results['coherence_ratio']:g}x "
              f"unsteered): " + ("passes at every coefficient" if not bad else
                                 "FAILS at " + ", ".join(f"{c:g}" for c in bad)))
    print(f"report: {Path(cfg.out) / 'report.html'}")
    return 0


@dataclass
class ExportCmd:
    """Write a steering vector as a llama.cpp control vector (GGUF): direction.k = layers.k."""

    vector: str = opt(help="steering vector directory", positional=True)
    gguf: str = opt(help="output .gguf path")
    coeff: float = opt(1.0, help="multiply the directions by this strength")
    unit: str = opt("unit", help="unit (unit directions) or raw (x mean-diff norm)")
    model_hint: str | None = opt(None, help="controlvector.model_hint (default: model_type)")

    def __post_init__(self) -> None:
        from reprlab.io import require_finite

        _check_common(unit=self.unit)
        require_finite(self.coeff, "--coeff")


def run_export(cfg: ExportCmd) -> int:
    from reprlab.steering.gguf_io import export_gguf
    from reprlab.steering.vector import SteeringVector

    vec = SteeringVector.load(cfg.vector)
    out = export_gguf(vec, cfg.gguf, coeff=cfg.coeff, unit=cfg.unit, model_hint=cfg.model_hint)
    print(f"control vector -> {out} (use: llama-cli --control-vector-scaled {out}:1.0)")
    return 0


@dataclass
class ImportCmd:
    """Read a llama.cpp / repeng control vector (GGUF) into a steering vector directory."""

    gguf: str = opt(help="input .gguf file", positional=True)
    out: str = opt(help="output vector directory")


def run_import(cfg: ImportCmd) -> int:
    from reprlab.steering.gguf_io import import_gguf

    vec = import_gguf(cfg.gguf)
    out = vec.save(cfg.out)
    print(f"steering vector ({len(vec)} sites: {', '.join(vec.sites[:6])}) -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("steer", help="steering vectors: fit, generate, validate, export",
                            description=plain(__doc__),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = parser.add_subparsers(dest="steer_command", metavar="ACTION")
    made = [
        subcommand(inner, "vector", VectorCmd, run_vector, "fit a steering vector"),
        subcommand(inner, "generate", GenerateCmd, run_generate, "generate with steering"),
        subcommand(inner, "validate", ValidateCmd, run_validate,
                   "dose-response validation with plots"),
        subcommand(inner, "export", ExportCmd, run_export, "export to llama.cpp GGUF"),
        subcommand(inner, "import", ImportCmd, run_import, "import a GGUF control vector"),
    ]
    for p in (parser, *made):
        p._negative_number_matcher = _NEG  # accept --coeffs -4,0,4 / -8:8:9


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience
    from reprlab.cli import main as cli_main

    return cli_main(["steer", *(argv if argv is not None else sys.argv[1:])])


__all__ = ["register"]
