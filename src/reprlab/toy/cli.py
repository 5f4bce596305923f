"""`reprlab toy build | path | info`: the toy causal LM that every causal-LM workflow can use.

Registering imports nothing heavy; the commands import torch when they run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from reprlab.cliutil import opt, require, subcommand

_PRESETS = ("default", "mini")


def _check_preset(preset: str) -> None:
    require(preset in _PRESETS, f"unknown --preset {preset!r}; use one of {', '.join(_PRESETS)}")


@dataclass
class ToyBuildCommand:
    """Train the toy models (base and SFT) once and cache them; a second build is a cache hit.

    The default preset takes about 10 minutes on one CPU core; a killed build resumes.
    The cache is $REPRLAB_HOME, else $XDG_CACHE_HOME/reprlab, else ~/.cache/reprlab.

    Example: reprlab toy build
    """

    preset: str = opt("default", help="default (~3.5M parameters) or mini (seconds, for tests)")
    force: bool = opt(False, help="rebuild even when a valid cached build exists")
    seed: int = opt(0, help="seed of the world and of training")
    no_progress: bool = opt(False, help="hide the progress bar")

    def __post_init__(self) -> None:
        _check_preset(self.preset)


@dataclass
class ToyPathCommand:
    """Print the directory of a built toy model (for shell use: "$(reprlab toy path)/...").

    Example: reprlab drift checkpoints --checkpoints "$(reprlab toy path)/checkpoints/step-*"
    """

    preset: str = opt("default", help="default or mini")
    model: str = opt("root", help="root (the build), base, sft or syco")

    def __post_init__(self) -> None:
        _check_preset(self.preset)
        require(self.model in ("root", "base", "sft", "syco"),
                f"unknown --model {self.model!r}; use root, base, sft or syco")


@dataclass
class ToyInfoCommand:
    """Show a built toy model's manifest: size, training, and its quality figures."""

    preset: str = opt("default", help="default or mini")
    json: bool = opt(False, help="print the whole manifest as JSON")

    def __post_init__(self) -> None:
        _check_preset(self.preset)


def _built(preset: str):
    from reprlab.errors import ModelError
    from reprlab.toy.build import ToyPaths, check_cache, toy_dir

    root = toy_dir(preset)
    problem = check_cache(root)
    if problem is not None:
        raise ModelError(f"the toy model '{preset}' in {root} is not usable ({problem}); run "
                         f"`reprlab toy build{'' if preset == 'default' else ' --preset ' + preset}`")
    return ToyPaths(root)


def run_build(cfg: ToyBuildCommand) -> int:
    from reprlab.toy.organism import syco_manifest
    from reprlab.toy.report import summary_lines, syco_lines
    from reprlab.toy.variants import build

    paths = build(cfg.preset, force=cfg.force, progress=not cfg.no_progress, seed=cfg.seed)
    print("\n".join(summary_lines(paths.manifest, paths.root)
                    + syco_lines(syco_manifest(paths.root), cfg.preset)))
    return 0


def run_path(cfg: ToyPathCommand) -> int:
    paths = _built(cfg.preset)
    print(paths.root if cfg.model == "root" else getattr(paths, cfg.model))
    return 0


def run_info(cfg: ToyInfoCommand) -> int:
    from reprlab.toy.organism import syco_manifest
    from reprlab.toy.report import summary_lines, syco_lines

    paths = _built(cfg.preset)
    organism = syco_manifest(paths.root)
    if cfg.json:
        print(json.dumps(paths.manifest | {"organism": organism}, indent=2))
    else:
        print("\n".join(summary_lines(paths.manifest, paths.root)
                        + syco_lines(organism, cfg.preset)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("toy", help="the toy causal LM trained on a world we know",
                            description="Build and locate the toy causal LM (models 'toy' and "
                            "'toy-sft' wherever a model name goes).")
    toy_sub = parser.add_subparsers(dest="toy_command", metavar="ACTION", required=True)
    subcommand(toy_sub, "build", ToyBuildCommand, run_build, "train and cache the toy models")
    subcommand(toy_sub, "path", ToyPathCommand, run_path, "print the cache directory")
    subcommand(toy_sub, "info", ToyInfoCommand, run_info, "show size, training and quality")
