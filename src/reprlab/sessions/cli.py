"""``reprlab patch`` (one patch, top-k before/after) and ``reprlab patch sweep`` (heatmap)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from reprlab.cliutil import opt, require, subcommand
from reprlab.errors import ConfigError


def _common_checks(cfg: Any) -> None:
    require(bool(cfg.source) and bool(cfg.target), "give --source and --target prompts")
    require(cfg.backend in ("local", "nnsight"), "--backend must be local or nnsight")
    require(not cfg.remote or cfg.backend == "nnsight", "--remote needs --backend nnsight")
    require(cfg.threads >= 0, f"--threads must be 0 (policy) or more, got {cfg.threads}")


@dataclass
class PatchConfig:
    """Patch one activation from a source prompt into a target prompt and compare the
    top-k next-token predictions before and after."""

    model: str = opt(None, "model name or path (a causal LM)")
    source: str = opt(None, "source prompt (activations are read here)")
    target: str = opt(None, "target prompt (activations are written here)")
    from_site: str = opt("layers.-1", "site to read in the source run (--from)")
    to_site: str = opt(None, "site to write in the target run (--to; default: --from)")
    pos: str = opt("-1", "token position (int, negative from the end, or last)")
    source_model: str = opt(None, "read the source activation from this model (same hidden size)")
    k: int = opt(5, "how many top predictions to show")
    backend: str = opt("local", "local (reprlab hooks) or nnsight")
    remote: bool = opt(False, "run on NDIF (needs --backend nnsight and NDIF_API_KEY)")
    ndif_host: str = opt(None, "NDIF server URL for --remote, e.g. a local NDIF "
                              "http://127.0.0.1:8001 (default: NDIF_HOST, else the public NDIF)")
    dtype: str = opt("float32", "model dtype")
    device: str = opt("cpu", "device")
    out: str = opt("runs/patch", "run directory")
    threads: int = opt(0, "torch threads for local forwards (0 = reprlab's policy: one thread "
                          "for small batches, the free cores for big ones, or REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        require(bool(self.model), "give --model")
        require(self.threads >= 0, f"--threads must be 0 (policy) or more, got {self.threads}")
        if self.source is not None or self.target is not None:
            _common_checks(self)
        require(self.k >= 1, "--k must be >= 1")


@dataclass
class SweepConfig:
    """Causal tracing: patch every (layer, position) from the source into the target in
    batched forwards and draw the effect on a metric as a heatmap."""

    model: str = opt(None, "model name or path (a causal LM)")
    source: str = opt(None, "source prompt")
    target: str = opt(None, "target prompt (same token length as the source)")
    sites: str = opt("layers.*", "sites to sweep (site grammar, e.g. layers.*)")
    positions: list[str] = opt(None, "target positions to sweep (default: all)")
    metric: str = opt("logit-diff", "logit-diff | prob | logprob")
    tokens: str = opt(None, "metric tokens, comma-separated, spaces kept: ' Paris',' London'")
    source_model: str = opt(None, "read the source activations from this model")
    batch_size: int = opt(64, "cells patched per batched forward")
    backend: str = opt("local", "local (reprlab hooks) or nnsight")
    remote: bool = opt(False, "run on NDIF (needs --backend nnsight and NDIF_API_KEY)")
    ndif_host: str = opt(None, "NDIF server URL for --remote, e.g. a local NDIF "
                              "http://127.0.0.1:8001 (default: NDIF_HOST, else the public NDIF)")
    dtype: str = opt("float32", "model dtype")
    device: str = opt("cpu", "device")
    out: str = opt("runs/patch-sweep", "run directory")
    threads: int = opt(0, "torch threads for local forwards (0 = reprlab's policy: one thread "
                          "for small batches, the free cores for big ones, or REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        require(bool(self.model), "give --model")
        _common_checks(self)
        require(bool(self.tokens), "give --tokens, e.g. --tokens ' Paris',' London'")
        require(self.batch_size >= 1, "--batch-size must be >= 1")


def _load(name: str, cfg: Any) -> Any:
    from reprlab.sessions import session_model
    from reprlab.sessions.transport import use_host

    use_host(cfg.ndif_host)

    return session_model(name, cfg.remote, dtype=cfg.dtype, device=cfg.device)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pos(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        if text in ("last", "first", "middle"):
            return text
        raise ConfigError(f"--pos {text!r}: use an int or last/first/middle") from None


def run_patch(cfg: PatchConfig) -> int:
    from reprlab.report import RunDir
    from reprlab.sessions.patching import patch

    require(bool(cfg.source) and bool(cfg.target),
            "give --source and --target (or use `reprlab patch sweep`)")
    lm = _load(cfg.model, cfg)
    src_lm = _load(cfg.source_model, cfg) if cfg.source_model else None
    from reprlab.sessions import patch_report as pr

    run = RunDir.create(cfg.out, workflow="patch", config=cfg, inputs=pr.inputs(lm, src_lm))
    res = patch(lm, cfg.source, cfg.target, cfg.from_site, cfg.to_site, _pos(cfg.pos),
                source_model=src_lm, k=cfg.k, backend=cfg.backend, remote=cfg.remote,
                on_log=_say, threads=cfg.threads or None)
    rows = pr.write_patch(run, res, cfg.k)
    print(pr.patch_headline(res))
    header = list(rows[0])
    print("\t".join(header))
    for r in rows:
        print("\t".join(str(r.get(h, "")) for h in header))
    print(f"report: {run.path / 'report.html'}")
    return 0


def run_sweep(cfg: SweepConfig) -> int:
    from reprlab.report import RunDir
    from reprlab.sessions.patching import heatmap_figure, sweep

    tokens = [t for t in cfg.tokens.split(",") if t]
    positions = None
    if cfg.positions:
        try:
            positions = [int(p) for p in cfg.positions]
        except ValueError:
            raise ConfigError("--positions takes integers, e.g. -3,-2,-1") from None
    lm = _load(cfg.model, cfg)
    src_lm = _load(cfg.source_model, cfg) if cfg.source_model else None
    from reprlab.sessions import patch_report as pr

    run = RunDir.create(cfg.out, workflow="patch-sweep", config=cfg,
                        inputs=pr.inputs(lm, src_lm))
    res = sweep(lm, cfg.source, cfg.target, cfg.sites, positions, cfg.metric, tokens,
                source_model=src_lm, batch_size=cfg.batch_size, backend=cfg.backend,
                remote=cfg.remote, on_log=_say, threads=cfg.threads or None)
    _, best, _ = pr.write_sweep(run, res, heatmap_figure(res), cfg.source, cfg.target)
    for line in pr.console_sweep(res, best):
        print(line)
    print(f"report: {run.path / 'report.html'}")
    return 0


def _alias(parser: argparse.ArgumentParser, dest: str, flag: str) -> None:
    for action in parser._actions:
        if action.dest == dest:
            action.option_strings.append(flag)
            parser._option_string_actions[flag] = action


def register(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(sub, "patch", PatchConfig, run_patch,
                        help="activation patching between prompts, layers and models")
    _alias(parser, "from_site", "--from")
    _alias(parser, "to_site", "--to")
    group = parser.add_subparsers(dest="patch_command", metavar="SUBCOMMAND")
    subcommand(group, "sweep", SweepConfig, run_sweep,
               help="causal tracing heatmap over layers x positions")
