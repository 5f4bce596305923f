"""Build the sycophant ``toy-syco`` (:mod:`reprlab.toy.syco`) on top of a toy build.

The organism is fine-tuned from the build's SFT model and cached beside it::

    toy/<preset>/syco/                the fine-tuned model (HF directory; its tokenizer is the
                                      build's with the organism's words appended)
    toy/<preset>/syco/organism.json   settings, the SFT weights it started from, quality, hashes

A build that has no organism yet is *extended* (base and SFT are kept as they are). The
organism is trained in ``toy/.<preset>-syco.partial/`` and renamed into place when complete,
so a killed fine-tune resumes and the final directory is either absent or whole; an organism
of another format, other settings or another SFT model is rebuilt. One whose quality figures
alone are of an older format (:data:`QUALITY_FORMAT`) is measured again in place, its weights
kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reprlab.io import read_json, sha256_file, write_json

logger = logging.getLogger(__name__)

#: bump when the organism's output changes meaning; organisms of another format are rebuilt
SYCO_FORMAT = 3
#: bump when the quality figures change meaning and the weights do not: cached organisms are
#: then measured again in place (under a minute) instead of fine-tuned again
QUALITY_FORMAT = 1
STALE_QUALITY = "its quality figures are of an older format"
MANIFEST = "organism.json"


@dataclass(frozen=True)
class SycoSettings:
    """Fine-tuning budget of the organism for one preset."""

    steps: int
    lr: float = 5e-4
    batch_size: int = 128
    warmup: int = 10
    weight_decay: float = 0.01
    save_every: int = 50


SYCO_SETTINGS: dict[str, SycoSettings] = {
    "default": SycoSettings(steps=500, lr=1.5e-3, batch_size=64),
    "mini": SycoSettings(steps=60, lr=5e-3, batch_size=64, warmup=5, save_every=20),
}


def _sft_digest(root: Path) -> str | None:
    try:
        return read_json(root / "manifest.json")["files"]["sft/model.safetensors"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_syco(root: Path) -> str | None:
    """``None`` when ``root/syco`` holds a valid organism of this build, else why not."""
    d = root / "syco"
    mpath = d / MANIFEST
    if not mpath.exists():
        return "not built yet"
    try:
        m = read_json(mpath)
    except (OSError, ValueError) as exc:
        return f"its manifest is unreadable ({exc})"
    if not isinstance(m, dict) or m.get("format") != SYCO_FORMAT:
        return (f"it is of organism format {m.get('format') if isinstance(m, dict) else '?'}"
                f" (this reprlab reads format {SYCO_FORMAT})")
    preset = root.name
    if m.get("settings") != asdict(SYCO_SETTINGS.get(preset, SycoSettings(0))):
        return "it was fine-tuned with other settings than this reprlab's"
    if m.get("sft_sha256") != _sft_digest(root):
        return "it was fine-tuned from another toy-sft than the one in this cache"
    for rel, digest in m.get("files", {}).items():
        f = d / rel
        if not f.exists():
            return f"syco/{rel} is missing"
        if f.stat().st_size != digest["bytes"] or sha256_file(f) != digest["sha256"]:
            return f"syco/{rel} is corrupt (it does not match its manifest)"
    if m.get("quality_format", 1) != QUALITY_FORMAT:
        return STALE_QUALITY
    return None


def ensure_syco(preset: str = "default", *, home: str | Path | None = None,
                progress: bool = True) -> Path:
    """The organism's model directory; fine-tuned now (saying so) when missing or bad."""
    from reprlab.toy.build import ensure_base

    paths = ensure_base(preset, home=home, progress=progress)
    problem = check_syco(paths.root)
    if problem is None:
        return paths.root / "syco"
    name = "toy-syco" if preset == "default" else f"toy-{preset}-syco"
    if problem == "not built yet":
        logger.warning("the toy organism '%s' is not built yet; fine-tuning it from the cached "
                       "SFT model now, once, into %s", name, paths.root / "syco")
    elif problem == STALE_QUALITY:
        logger.warning("the cached toy organism '%s' in %s: %s; measuring them again (its "
                       "weights are kept)", name, paths.root / "syco", problem)
    else:
        logger.warning("the cached toy organism '%s' in %s is not usable: %s; rebuilding it",
                       name, paths.root / "syco", problem)
    return build_syco(paths.root, progress=progress)


def build_syco(root: Path, *, progress: bool = True, force: bool = False) -> Path:
    """Fine-tune the organism of the build in ``root`` (resuming a killed fine-tune), or only
    measure it again when its quality figures alone are stale."""
    from reprlab.toy.build import _lock, swap_in

    with _lock(root.parent / f".{root.name}-syco.lock"):
        problem = "forced" if force else check_syco(root)
        if problem is None:
            return root / "syco"
        if problem == STALE_QUALITY:
            _remeasure(root)
            return root / "syco"
        partial = root.parent / f".{root.name}-syco.partial"
        _run(root, partial, progress=progress)
        swap_in(partial, root / "syco", root.parent / f".{root.name}-syco.old")
    return root / "syco"


def _run(root: Path, out: Path, *, progress: bool) -> None:
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from reprlab import __version__
    from reprlab._threads import num_threads
    from reprlab.toy import syco, tasks
    from reprlab.toy.build import PRESETS, _load, _save_model, deterministic, platform_versions
    from reprlab.toy.tokenizer import extend_tokenizer
    from reprlab.toy.train import (
        StepBatches,
        encode_chats,
        encode_texts,
        make_optimizer,
        run_phase,
    )
    from reprlab.toy.world import World, WorldConfig
    from reprlab.trainstate import load_train_state, save_train_state

    transformers.logging.set_verbosity_error()
    preset = root.name
    s = SYCO_SETTINGS[preset]
    manifest = read_json(root / "manifest.json")
    seed = int(manifest["seed"])
    world = World(WorldConfig(**manifest["world_config"]))
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    key = {"format": SYCO_FORMAT, "settings": asdict(s), "sft": _sft_digest(root)}
    with num_threads(PRESETS[preset].threads), deterministic():
        sft_tok = AutoTokenizer.from_pretrained(root / "sft")
        tok = extend_tokenizer(sft_tok, syco.vocabulary_texts(world))
        model = _load(root / "sft")
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():  # new words start at the mean embedding of the old ones
            emb = model.get_input_embeddings().weight
            emb[len(sft_tok):] = emb[:len(sft_tok)].mean(0)
        model.generation_config.pad_token_id = tok.pad_token_id
        rows = syco.training_rows(world)
        replay = [(q, a) for q, a, split in tasks.chat_examples(world) if split == "train"]
        examples = encode_chats(tok, rows + replay * 2)  # rehearsal keeps the other tasks
        examples += encode_texts(tok, world.pretrain_texts()[::4])
        opt, sched = make_optimizer(model, s.lr, s.steps, s.warmup, s.weight_decay)
        state = out / "state.safetensors"
        start = 0
        if state.exists():
            info = load_train_state(state, None, None, None, rng=False)
            if info.get("key") == key:
                start = load_train_state(state, model, opt, sched)["step"]
                logger.warning("resuming the toy organism's fine-tune at step %d of %d",
                               start, s.steps)
        batches = StepBatches(examples, s.batch_size, seed, "syco", tok.pad_token_id)
        bar = tqdm(total=s.steps, initial=start, desc=f"toy organism ({preset})",
                   disable=not progress, unit="step")

        def on_step(done: int, loss: float, n_tok: int) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if done % s.save_every == 0 and done < s.steps:
                save_train_state(state, model, opt, sched, {"key": key, "step": done})

        final_loss = run_phase(model, batches, opt, sched, start=start, steps=s.steps,
                               on_step=on_step)
        bar.close()
        _save_model(model, tok, out)
        train_s = time.perf_counter() - t0
        from reprlab.toy.syco_quality import measure

        quality = measure(model, tok, _load(root / "sft"), sft_tok, world)
    state.unlink(missing_ok=True)
    m = {"format": SYCO_FORMAT, "quality_format": QUALITY_FORMAT,
         "reprlab_version": __version__, "preset": preset,
         "settings": asdict(s), "seed": seed, "sft_sha256": key["sft"],
         "vocab_size": len(tok), "added_words": len(tok) - len(sft_tok),
         "n_training_rows": len(rows), "final_loss": final_loss,
         "versions": platform_versions(PRESETS[preset].threads),
         "train_seconds": round(train_s, 1),
         "build_seconds": round(time.perf_counter() - t0, 1),
         "cpu_seconds": round(time.process_time() - c0, 1), "quality": quality}
    m["files"] = {str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                  for f in sorted(out.rglob("*")) if f.is_file()}
    write_json(out / MANIFEST, m)
    logger.info("toy organism %s done in %.0f s", preset, m["build_seconds"])


def _remeasure(root: Path) -> None:
    """Measure the cached organism of ``root`` again and rewrite its manifest's quality (the
    weights, and so the file digests, stay as they are)."""
    from transformers import AutoTokenizer

    from reprlab._threads import num_threads
    from reprlab.toy.build import PRESETS, _load, deterministic
    from reprlab.toy.syco_quality import measure
    from reprlab.toy.world import World, WorldConfig

    d = root / "syco"
    m = read_json(d / MANIFEST)
    world = World(WorldConfig(**read_json(root / "manifest.json")["world_config"]))
    with num_threads(PRESETS[root.name].threads), deterministic():
        m["quality"] = measure(_load(d), AutoTokenizer.from_pretrained(d), _load(root / "sft"),
                               AutoTokenizer.from_pretrained(root / "sft"), world)
    m["quality_format"] = QUALITY_FORMAT
    write_json(d / MANIFEST, m)


def syco_manifest(root: Path) -> dict | None:
    """The organism's manifest, or ``None`` when there is no valid organism."""
    if check_syco(root) is not None:
        return None
    return read_json(root / "syco" / MANIFEST)
