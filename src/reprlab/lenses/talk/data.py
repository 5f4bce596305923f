"""Training data of the talkative lens, dumped once and reused across runs and sweeps.

A dump directory holds an :class:`~reprlab.store.ActivationStore` captured at the site with
position ``all`` (every token's activation), and ``samples.safetensors``: the pretokenised
inputs (``input_ids [N, T]`` right-padded, ``lengths [N]``) and the samples (``row, pos``):
by default every token position of every text except special tokens (bos, eos, pad: their
outlier activations would flatter any method), or one position per text (``random`` or an
index). Each sample has a partner from another sequence (``row2, pos2``) for resample
ablation. ``samples.json`` records the request; the same request again is a cache hit that
runs no forward pass of the target model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ConfigError, DataError, StoreError
from reprlab.io import atomic_write_bytes, ensure_writable_dir, read_json, write_json
from reprlab.models import LoadedModel
from reprlab.store import MANIFEST, ActivationStore

logger = logging.getLogger(__name__)


@dataclass
class LensData:
    """Activations ``a [N, d]`` at ``(row, pos)``, partners ``a2``, inputs, and statistics."""

    a: torch.Tensor
    a2: torch.Tensor
    input_ids: torch.Tensor
    lengths: torch.Tensor
    row: torch.Tensor
    pos: torch.Tensor
    row2: torch.Tensor
    pos2: torch.Tensor
    site: str
    path: Path
    cache_hit: bool
    texts: list[str]

    def __len__(self) -> int:
        return int(self.row.numel())

    @property
    def token(self) -> torch.Tensor:
        """The token id at each sample ``[N]``."""
        return self.input_ids[self.row, self.pos]

    def split(self, eval_rows: int) -> tuple[list[int], list[int]]:
        """Training and held-out sample indices, split by whole texts: the held-out samples are
        those of the last texts, as few texts as give at least ``eval_rows`` samples (a text's
        positions never sit on both sides)."""
        if eval_rows <= 0 or len(self) < 2:
            return list(range(len(self))), []
        rows = self.row.tolist()
        order = sorted(set(rows))
        held: set[int] = set()
        count = 0
        for r in reversed(order[1:]):  # keep at least one text to train on
            held.add(r)
            count += rows.count(r)
            if count >= eval_rows:
                break
        train = [i for i, r in enumerate(rows) if r not in held]
        return train, [i for i, r in enumerate(rows) if r in held]

    def stats(self, idx: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [d], variance [])`` of the samples ``idx``: the predict-the-mean baseline
        and the MSE normaliser (mean over dimensions of the per-dimension variance)."""
        a = self.a[torch.as_tensor(idx, dtype=torch.long)]
        mean = a.mean(0)
        return mean, ((a - mean) ** 2).mean()

    @property
    def mean(self) -> torch.Tensor:
        return self.a.mean(0)

    @property
    def variance(self) -> torch.Tensor:
        """Mean over dimensions of the per-dimension variance (the MSE normaliser)."""
        return ((self.a - self.mean) ** 2).mean()

    def context(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded inputs ``[B, T']`` cut after the longest sampled position, and ``pos``."""
        pos = self.pos[i]
        rows = self.row[i]
        t = int(pos.max()) + 1
        return self.input_ids[rows, :t], pos


def _sample_positions(lengths: torch.Tensor, position: str, min_position: int,
                      g: torch.Generator) -> torch.Tensor:
    """One position per text: ``random`` (at least ``min_position``) or a token index."""
    if position == "random":
        lo = torch.full_like(lengths, min_position).clamp(max=lengths - 1)
        u = torch.rand(lengths.shape, generator=g)
        return lo + (u * (lengths - lo).float()).long().clamp(max=lengths - 1 - lo)
    try:
        k = int(position)
    except ValueError:
        raise ConfigError(f"--position must be all, random or a token index, got "
                          f"{position!r}") from None
    bad = int(((k >= lengths) | (k < -lengths)).sum())
    if bad:
        raise ConfigError(f"--position {k} is outside {bad} of {len(lengths)} texts (they have "
                          f"{int(lengths.min())} to {int(lengths.max())} tokens); give an index "
                          "every text has, or random or all")
    return torch.where(torch.tensor(k) < 0, lengths + k, torch.full_like(lengths, k))


def all_positions(input_ids: torch.Tensor, lengths: torch.Tensor, special: set[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, pos)`` of every real token that is not a special token."""
    rows, cols = [], []
    for r in range(input_ids.shape[0]):
        for p in range(int(lengths[r])):
            if int(input_ids[r, p]) not in special:
                rows.append(r)
                cols.append(p)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def _partners(row: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each sample, the index of a sample from another text (drawn uniformly)."""
    n = row.numel()
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        for _ in range(64):
            j = int(torch.randint(0, n, (1,), generator=g))
            if row[j] != row[i]:
                break
        out[i] = j
    return out


def special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special token ids (bos, eos, pad, unk, ...)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            ids.add(int(v))
    return {int(i) for i in ids}


def check_sample_position(tokenizer, texts: list[str], position: str, max_length: int
                          ) -> tuple[list[list[int]], torch.Tensor]:
    """The texts' token ids and lengths; :class:`ConfigError` (one line) when ``position``
    is a token index that some text lacks, before anything is captured or written."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length,
                    add_special_tokens=True)["input_ids"]
    lengths = torch.tensor([len(x) for x in ids])
    if position not in ("all", "random"):
        _sample_positions(lengths, position, 1, torch.Generator())
    return ids, lengths


def dump(lm: LoadedModel, texts: list[str], site: str, out: str | Path, *,
         position: str = "all", min_position: int = 1, seed: int = 0, max_length: int = 64,
         progress: bool = True, data_hash: str = "") -> LensData:
    """Capture (or reuse) the activations at ``site`` and list the samples: every
    non-special position (``all``) or one position per text."""
    from reprlab.capture import capture

    if len(texts) < 2:
        raise DataError("the talkative lens needs at least 2 texts (A' comes from another one)")
    tok = lm.tokenizer
    ids, lengths = check_sample_position(tok, texts, position, max_length)
    out = ensure_writable_dir(out)
    store_dir = out / "store"
    if (store_dir / MANIFEST).exists():
        ActivationStore.open(store_dir, expect_model=lm.identity())
    store = capture(lm, list(texts), sites=site, positions="all", out=store_dir,
                    max_length=max_length, progress=progress, batch_size=16)
    site_name = store.sites[0]
    request = {"store": store.manifest["request_id"], "position": position,
               "min_position": min_position, "seed": seed, "samples": 2}
    rid = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:20]
    samples = out / "samples.safetensors"
    meta = out / "samples.json"
    hit = store.cache_hit and samples.exists() and meta.exists() \
        and read_json(meta).get("request_id") == rid
    if not hit:
        if lengths.tolist() != store.lengths:
            raise StoreError(f"{store_dir} tokenises the texts differently; delete {out}")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), int(lengths.max())), pad, dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)] = torch.tensor(x)
        g = torch.Generator().manual_seed(seed)
        n = len(ids)
        special = special_ids(tok)
        if position == "all":
            row, pos = all_positions(input_ids, lengths, special)
            if row.numel() == 0:
                raise DataError("the texts hold no token but special tokens; give real text")
            if len(set(row.tolist())) < 2:
                raise DataError("the talkative lens needs at least 2 texts with real tokens")
            partner = _partners(row, g)
            row2, pos2 = row[partner], pos[partner]
        else:
            row = torch.arange(n)
            pos = _sample_positions(lengths, position, min_position, g)
            shift = torch.randint(1, n, (n,), generator=g)
            row2 = (row + shift) % n  # always another sequence
            pos2 = _sample_positions(lengths[row2], position, min_position, g)
        from safetensors.torch import save

        atomic_write_bytes(samples, save({"input_ids": input_ids, "lengths": lengths,
                                          "row": row, "pos": pos, "row2": row2, "pos2": pos2}))
        write_json(meta, {"request_id": rid, "request": request, "site": site_name,
                          "model": lm.identity(), "n": n})
    else:
        logger.info("cache hit: %s already holds these activations", out)
    return load_dump(out, lm, cache_hit=hit)


def load_dump(out: str | Path, lm: LoadedModel | None = None, cache_hit: bool = True) -> LensData:
    """Read a dump made by :func:`dump` (checking the model when ``lm`` is given)."""
    from safetensors.torch import load_file

    out = Path(out)
    store = ActivationStore.open(out / "store", expect_model=None if lm is None else lm.identity())
    if not (out / "samples.safetensors").exists():
        raise StoreError(f"{out} has no samples.safetensors; run `reprlab lens talk train` again")
    t = load_file(str(out / "samples.safetensors"))
    site = store.sites[0]
    flat = store[site, "all"]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), t["lengths"].cumsum(0)])
    a = flat[offsets[t["row"]] + t["pos"]].float().clone()
    a2 = flat[offsets[t["row2"]] + t["pos2"]].float().clone()
    return LensData(a=a, a2=a2, input_ids=t["input_ids"], lengths=t["lengths"], row=t["row"],
                    pos=t["pos"], row2=t["row2"], pos2=t["pos2"], site=site, path=out,
                    cache_hit=cache_hit, texts=list(store.texts or []))


def describe(data: LensData) -> dict[str, Any]:
    return {"path": str(data.path), "site": data.site, "samples": len(data),
            "cache_hit": data.cache_hit, "variance": float(data.variance)}
