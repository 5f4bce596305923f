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
    threads: int = opt(0, help="torch threads for the forwards (0 = reprlab's policy: one "
                               "thread for small batches, the free cores for big ones, or "
                               "REPRLAB_THREADS)")

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        require(self.threads >= 0, f"--threads must be 0 (policy) or more, got {self.threads}")
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
                    progress=not cfg.no_progress, threads=cfg.threads or None)
    info = store.info()
    state = "already captured (cache hit)" if store.cache_hit else "captured"
    print(f"{state}: {info['rows']} rows × {len(info['sites'])} sites × "
          f"{len(info['positions'])} positions, {info['size']} in {info['path']}")
    if store.manifest.get("n_truncated"):
        print(f"{store.manifest['n_truncated']} of {info['rows']} texts were longer than "
              f"{store.manifest['max_length']} tokens and were truncated")
    return 0


@dataclass
class StoreInfoCommand:
    """Describe an activation store: sites, positions, rows, dtype, model, dataset hash, size,
    and the typical activation norm at each site and position (to choose steering
    coefficients, which are in activation units)."""

    path: str = opt(help="store directory", positional=True)
    json: bool = opt(False, help="print JSON instead of a table")
    verify: bool = opt(False, help="also check every file against its sha256")
    norm_rows: int = opt(256, help="rows (evenly spaced) read to measure activation norms "
                                   "(0 = skip the norms)")

    def __post_init__(self) -> None:
        require(self.norm_rows >= 0, f"--norm-rows must be 0 or more, got {self.norm_rows}")


def activation_norms(store, max_rows: int = 256) -> dict[str, dict[str, dict[str, float]]]:
    """``{site: {position: {"median", "p10", "p90", "rows"}}}`` of the L2 norm of the stored
    activations, on ``max_rows`` evenly spaced rows (all when fewer)."""
    import torch

    out: dict[str, dict[str, dict[str, float]]] = {}
    for site in store.sites:
        for pos in store.positions:
            if (site, pos) not in store:
                continue
            x = store[site, pos]
            n = x.shape[0]
            idx = torch.linspace(0, n - 1, min(n, max_rows)).round().long().unique()
            norms = x[idx].float().norm(dim=-1)
            q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9]))
            out.setdefault(site, {})[pos] = {"median": float(q[1]), "p10": float(q[0]),
                                             "p90": float(q[2]), "rows": int(idx.numel())}
    return out


def run_store_info(cfg: StoreInfoCommand) -> int:
    from reprlab.store import ActivationStore

    store = ActivationStore.open(cfg.path)
    if cfg.verify:
        store.verify()
    info = store.info()
    norms = activation_norms(store, cfg.norm_rows) if cfg.norm_rows else {}
    if cfg.json:
        print(json.dumps({**info, **({"norms": norms} if norms else {})}, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, list):
            v = ", ".join(map(str, v))
        print(f"{k:<{width}}  {v}")
    if cfg.verify:
        print(f"{'verified':<{width}}  all checksums match")
    if norms:
        rows = next(iter(next(iter(norms.values())).values()))["rows"]
        print(f"{'norms':<{width}}  median ‖activation‖ (10th–90th percentile) over {rows} rows")
        site_w = max(len(s) for s in norms)
        for site, by_pos in norms.items():
            cells = "   ".join(f"{pos} {v['median']:.3g} ({v['p10']:.3g}–{v['p90']:.3g})"
                               for pos, v in by_pos.items())
            print(f"  {site:<{site_w}}  {cells}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    subcommand(sub, "capture", CaptureCommand, run_capture,
               help="capture activations into a resumable store")
    store = sub.add_parser("store", help="inspect activation stores")
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    subcommand(store_sub, "info", StoreInfoCommand, run_store_info,
               help="describe a store")
