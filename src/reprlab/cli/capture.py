"""`reprlab capture` and `reprlab store info`: the commands of the core modules
(:mod:`reprlab.capture`, :mod:`reprlab.store`); each workflow package keeps its own `cli.py`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from reprlab.cliutil import opt, require, subcommand


@dataclass
class CaptureCommand:
    """Capture activations of a dataset at sites × positions into a resumable store.

    Example: reprlab capture --model minilm --data builtin:cities --sites "layers.*"
             --positions last,mean --out runs/cap
    """

    model: str = opt("minilm", help="model alias, local path or hub name")
    data: str = opt("builtin:cities", help="dataset: builtin:NAME, a .csv/.json/.jsonl/.parquet file, or hf:NAME")
    sites: str = opt("layers.*", help="sites to read, e.g. 'layers.*', 'embed,layers.0:6:2'")
    positions: list[str] = opt(factory=lambda: ["last", "mean"],
                               help="token positions: last, first, middle, mean, mean:content, all, or an index")
    out: str = opt("runs/capture", help="store directory")
    batch_size: int = opt(32, help="rows per forward pass")
    dtype: str = opt("float32", help="storage dtype: float32, float16, bfloat16")
    model_dtype: str = opt("float32", help="dtype to run the model in")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    max_length: int = opt(512, help="truncate texts to this many tokens")
    text_col: str = opt("text", help="text column of a file dataset")
    label_col: str = opt("label", help="label column of a file dataset")
    limit: int = opt(0, help="use only the first N rows (0 = all)")
    overwrite: bool = opt(False, help="replace a store that holds a different capture")
    trust_remote_code: bool = opt(False, help="allow custom model code from the checkpoint")
    no_progress: bool = opt(False, help="hide the progress bar")

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        require(self.max_length >= 1, f"--max-length must be at least 1, got {self.max_length}")
        require(self.limit >= 0, f"--limit must be 0 or more, got {self.limit}")


def run_capture(cfg: CaptureCommand) -> int:
    from reprlab.capture import capture
    from reprlab.data import load_dataset
    from reprlab.models import load_model

    data = load_dataset(cfg.data, text_col=cfg.text_col, label_col=cfg.label_col,
                        limit=cfg.limit or None)
    lm = load_model(cfg.model, dtype=cfg.model_dtype, device=cfg.device,
                    trust_remote_code=cfg.trust_remote_code, max_length=cfg.max_length)
    store = capture(lm, data, cfg.sites, cfg.positions, cfg.out, batch_size=cfg.batch_size,
                    dtype=cfg.dtype, max_length=cfg.max_length, overwrite=cfg.overwrite,
                    progress=not cfg.no_progress)
    info = store.info()
    state = "already captured (cache hit)" if store.cache_hit else "captured"
    print(f"{state}: {info['rows']} rows × {len(info['sites'])} sites × "
          f"{len(info['positions'])} positions, {info['size']} in {info['path']}")
    return 0


@dataclass
class StoreInfoCommand:
    """Describe an activation store: sites, positions, rows, dtype, model, dataset hash, size."""

    path: str = opt(help="store directory", positional=True)
    json: bool = opt(False, help="print JSON instead of a table")
    verify: bool = opt(False, help="also check every file against its sha256")


def run_store_info(cfg: StoreInfoCommand) -> int:
    from reprlab.store import ActivationStore

    store = ActivationStore.open(cfg.path)
    if cfg.verify:
        store.verify()
    info = store.info()
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, list):
            v = ", ".join(map(str, v))
        print(f"{k:<{width}}  {v}")
    if cfg.verify:
        print(f"{'verified':<{width}}  all checksums match")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    subcommand(sub, "capture", CaptureCommand, run_capture,
               help="capture activations into a resumable store")
    store = sub.add_parser("store", help="inspect activation stores")
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    subcommand(store_sub, "info", StoreInfoCommand, run_store_info,
               help="describe a store")
