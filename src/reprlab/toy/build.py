"""Build the toy models once, resumably, and cache them.

Layout under ``toy_home()`` (``$REPRLAB_HOME``, else ``$XDG_CACHE_HOME/reprlab``, else
``~/.cache/reprlab``)::

    toy/<preset>/manifest.json      seed, corpus hash, configs, versions, quality, file hashes
    toy/<preset>/base/              the pretrained model (HF directory: config, safetensors,
                                    tokenizer with chat template)
    toy/<preset>/sft/               the same model fine-tuned on the world's chat instructions
    toy/<preset>/checkpoints/step-000000 ... step-NNNNNN   log-spaced pretraining checkpoints

A build runs in ``toy/.<preset>.partial/`` and is renamed into place when complete, so the
final directory is either absent or whole. The partial directory keeps one training-state
file (:mod:`reprlab.trainstate`); a killed build started again resumes from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from reprlab.errors import ConfigError
from reprlab.io import apply_umask, read_json, sha256_file, write_json

logger = logging.getLogger(__name__)

#: bump when the build's output changes meaning; caches of another format are rebuilt
FORMAT = 1


@dataclass(frozen=True)
class Preset:
    """Model size and training budget of one toy build."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    base_steps: int
    sft_steps: int
    batch_size: int = 128
    lr: float = 2e-3
    sft_lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 40
    n_checkpoints: int = 7
    save_every: int = 50
    threads: int = 1


PRESETS: dict[str, Preset] = {
    # ~3M parameters, 6 blocks (so that layers.-2 comes after the fact lookup); about 10
    # minutes on one core of a laptop-class CPU (585-628 s of CPU measured, docs/toy.md)
    "default": Preset(hidden=192, layers=6, heads=4, intermediate=576, base_steps=1300,
                      sft_steps=200),
    # the same world and code path in seconds, for tests (weakly trained)
    "mini": Preset(hidden=32, layers=2, heads=2, intermediate=64, base_steps=40, sft_steps=20,
                   batch_size=64, lr=5e-3, warmup=5, n_checkpoints=3, save_every=10),
}

#: model names -> (preset, which model)
MODEL_ALIASES = {"toy": ("default", "base"), "toy-sft": ("default", "sft"),
                 "toy-syco": ("default", "syco"), "toy-mini": ("mini", "base"),
                 "toy-mini-sft": ("mini", "sft"), "toy-mini-syco": ("mini", "syco")}


@dataclass(frozen=True)
class ToyPaths:
    root: Path

    @property
    def home(self) -> Path:
        """The cache root this build lives in (``<home>/toy/<preset>``)."""
        return self.root.parent.parent

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def syco(self) -> Path:
        """The sycophant organism (:mod:`reprlab.toy.organism`), when built."""
        return self.root / "syco"

    @property
    def checkpoints(self) -> list[Path]:
        return sorted((self.root / "checkpoints").glob("step-*"))

    @property
    def manifest(self) -> dict:
        return read_json(self.root / "manifest.json")


def toy_home() -> Path:
    """The cache root: ``$REPRLAB_HOME``, ``$XDG_CACHE_HOME/reprlab`` or ``~/.cache/reprlab``."""
    from reprlab.io import reprlab_home

    return reprlab_home()


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown toy preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def toy_dir(preset: str = "default", home: str | Path | None = None) -> Path:
    """Where ``preset`` is cached: ``<home>/toy/<preset>`` (``home`` defaults to
    :func:`toy_home`)."""
    _preset(preset)
    return (Path(home).expanduser() if home else toy_home()) / "toy" / preset


def check_cache(root: Path) -> str | None:
    """``None`` when ``root`` holds a valid build of this format, else why not (one line)."""
    mpath = root / "manifest.json"
    if not mpath.exists():
        return "not built yet"
    try:
        manifest = read_json(mpath)
    except (OSError, ValueError) as exc:
        return f"its manifest is unreadable ({exc})"
    if manifest.get("format") != FORMAT:
        return (f"it was built by reprlab {manifest.get('reprlab_version', '?')} (toy format "
                f"{manifest.get('format')}, this reprlab reads format {FORMAT})")
    preset = PRESETS.get(manifest.get("preset", ""))
    if preset is None or manifest.get("preset_config") != asdict(preset):
        return (f"it was built with other settings of preset {manifest.get('preset')!r} "
                "than this reprlab's")
    for rel, digest in manifest.get("files", {}).items():
        f = root / rel
        if not f.exists():
            return f"{rel} is missing"
        if f.stat().st_size != digest["bytes"] or (
                rel.endswith(".safetensors") and "checkpoints" not in rel
                and sha256_file(f) != digest["sha256"]):
            return f"{rel} is corrupt (it does not match the manifest)"
    return None


def ensure_base(preset: str = "default", *, home: str | Path | None = None,
                progress: bool = True) -> ToyPaths:
    """The cached base and SFT models of ``preset``; built (or rebuilt, saying why) when
    missing or bad. (:func:`reprlab.toy.variants.ensure_built` adds the organism.)"""
    root = toy_dir(preset, home)
    problem = check_cache(root)
    if problem is None:
        return ToyPaths(root)
    if problem == "not built yet":
        logger.warning("the toy model '%s' is not built yet; building it now, once, into %s",
                       preset, root)
    else:
        logger.warning("the cached toy model in %s is not usable: %s; rebuilding it", root,
                       problem)
    return build_base(preset, home=home, progress=progress)


def platform_versions(threads: int) -> dict:
    """What the weights depend on besides code and seed: library versions, the CPU kernel
    family torch dispatches to, and the thread count."""
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": threads, "deterministic_algorithms": True}
    try:
        info["mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except AttributeError:  # pragma: no cover
        pass
    return info


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels where torch has them (restored after)."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another process is building the toy model (lock %s); waiting", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _writable(root: Path) -> None:
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        probe = root.parent / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the toy model cache in {root.parent} "
                          f"({exc.strerror or exc}); set REPRLAB_HOME to a writable "
                          "directory") from None


def checkpoint_steps(total: int, n: int) -> list[int]:
    """0 and ``n - 1`` log-spaced steps up to ``total``."""
    steps = {0, total} | {int(round(x)) for x in np.geomspace(10, total, max(1, n - 1))}
    return sorted(s for s in steps if 0 <= s <= total)


def build_base(preset: str = "default", *, home: str | Path | None = None,
               force: bool = False, progress: bool = True, seed: int = 0) -> ToyPaths:
    """Train the toy base and SFT models of ``preset``, resuming a killed build (a valid cache
    is kept unless ``force``). :func:`reprlab.toy.variants.build` adds the organism."""
    root = toy_dir(preset, home)
    _writable(root)
    with _lock(root.parent / f".{root.name}.lock"):
        if force or check_cache(root) is not None:
            _build_base(root, preset, progress=progress, seed=seed)
    return ToyPaths(root)


def _build_base(root: Path, preset: str, *, progress: bool, seed: int) -> None:
    partial = root.parent / f".{root.name}.partial"
    _run_build(preset, partial, progress=progress, seed=seed)
    swap_in(partial, root, root.parent / f".{root.name}.old")


def swap_in(partial: Path, final: Path, old: Path) -> None:
    """Put the finished ``partial`` directory in place of ``final`` (an earlier one is moved to
    ``old`` first and removed after, so ``final`` is never half-written)."""
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _make_model(p: Preset, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=p.hidden, num_hidden_layers=p.layers,
        num_attention_heads=p.heads, num_key_value_heads=p.heads,
        intermediate_size=p.intermediate, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def _save_model(model, tok, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    apply_umask(tmp)  # save_pretrained writes its safetensors 0600
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _run_build(preset: str, out: Path, *, progress: bool, seed: int) -> None:
    import transformers
    from tqdm.auto import tqdm

    from reprlab import __version__
    from reprlab._threads import num_threads
    from reprlab.toy import tasks
    from reprlab.toy.tokenizer import build_tokenizer
    from reprlab.toy.train import (
        StepBatches,
        Throughput,
        encode_chats,
        encode_texts,
        make_optimizer,
        run_phase,
    )
    from reprlab.toy.world import PROVENANCE, World, WorldConfig
    from reprlab.trainstate import load_train_state, save_train_state

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    p = _preset(preset)
    world = World(WorldConfig(seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    t_start, c_start = time.perf_counter(), time.process_time()
    with num_threads(p.threads), deterministic():
        tok = build_tokenizer(tasks.vocabulary_texts(world))
        model = _make_model(p, tok, seed)
        base_ex = encode_texts(tok, world.pretrain_texts())
        chat_rows = tasks.chat_examples(world)
        sft_ex = encode_chats(tok, [(q, a) for q, a, s in chat_rows if s == "train"])
        sft_ex += base_ex[::2]  # keep the facts in the SFT model's plain-text use
        phases = [("base", base_ex, p.base_steps, p.lr), ("sft", sft_ex, p.sft_steps, p.sft_lr)]
        state_path = out / "state.safetensors"
        ckpt_steps = checkpoint_steps(p.base_steps, p.n_checkpoints)
        key = {"format": FORMAT, "preset": asdict(p), "seed": seed, "world": world.hash()}
        resumed = load_train_state(state_path, None, None, None, rng=False) \
            if state_path.exists() else None
        if resumed is not None and resumed.get("key") != key:
            logger.warning("the partial toy build in %s was started with other settings; "
                           "starting over", out)
            resumed = None
        bar = tqdm(total=p.base_steps + p.sft_steps, desc=f"toy build ({preset})",
                   disable=not progress, unit="step", smoothing=0.1)
        rate = Throughput()
        stats: dict = {}
        for phase, examples, steps, lr in phases:
            if resumed is not None and resumed["phase"] == "sft" and phase == "base":
                bar.update(steps)
                base_model = _load(out / "base")
                continue
            opt, sched = make_optimizer(model, lr, steps, p.warmup, p.weight_decay)
            start = 0
            if resumed is not None and resumed["phase"] == phase:
                info = load_train_state(state_path, model, opt, sched)
                start = info["step"]
                stats.update(info.get("stats", {}))
                logger.warning("resuming the toy build at %s step %d of %d", phase, start, steps)
                resumed = None
                bar.update(start)
            elif phase == "sft" and start == 0:
                save_train_state(state_path, model, opt, sched,
                                 {"key": key, "phase": phase, "step": 0, "stats": stats})
            if phase == "base" and start == 0 and 0 in ckpt_steps:
                _save_model(model, tok, out / "checkpoints" / "step-000000")
            batches = StepBatches(examples, p.batch_size, seed, phase, tok.pad_token_id)

            def on_step(done: int, loss: float, n_tok: int, phase=phase, opt=opt,
                        sched=sched, steps=steps) -> None:
                rate.add(n_tok)
                bar.update(1)
                bar.set_postfix(phase=phase, loss=f"{loss:.3f}", tok_s=f"{rate.rate:.0f}")
                if phase == "base" and done in ckpt_steps:
                    _save_model(model, tok, out / "checkpoints" / f"step-{done:06d}")
                if done % p.save_every == 0 or done == steps:
                    stats[f"{phase}_loss"] = loss
                    save_train_state(state_path, model, opt, sched,
                                     {"key": key, "phase": phase, "step": done,
                                      "stats": stats})

            final = run_phase(model, batches, opt, sched, start=start, steps=steps,
                              on_step=on_step)
            stats[f"{phase}_final_loss"] = final
            stats[f"{phase}_tokens_per_s"] = rate.rate
            if phase == "base":
                _save_model(model, tok, out / "base")
                base_model = _load(out / "base")
        bar.close()
        _save_model(model, tok, out / "sft")
        train_s = time.perf_counter() - t_start
        qual = measure_quality(base_model, model, tok, world, chat_rows)
    manifest = {
        "format": FORMAT, "reprlab_version": __version__, "preset": preset,
        "preset_config": asdict(p), "seed": seed, "world_config": asdict(world.config),
        "world_hash": world.hash(), "vocab_size": len(tok),
        "n_parameters": sum(t.numel() for t in model.parameters()),
        "model_config": model.config.to_dict() | {"torch_dtype": None, "dtype": None},
        "versions": platform_versions(p.threads),
        "provenance": PROVENANCE,
        "checkpoint_steps": ckpt_steps, "train": stats,
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "train_seconds": round(train_s, 1),
        "cpu_seconds": round(time.process_time() - c_start, 1), "quality": qual,
    }
    state_path.unlink(missing_ok=True)
    files = {}
    for f in sorted(out.rglob("*")):
        if f.is_file():
            rel = str(f.relative_to(out))
            files[rel] = {"bytes": f.stat().st_size,
                          "sha256": sha256_file(f) if "checkpoints" not in rel else None}
    manifest["files"] = files
    write_json(out / "manifest.json", manifest)
    logger.info("toy build %s done in %.0f s", preset, manifest["build_seconds"])


def _load(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path).eval()


def measure_quality(base, sft, tok, world, chat_rows) -> dict:
    """The figures of :mod:`reprlab.toy.quality` for the base and SFT models."""
    from reprlab.toy import quality

    facts = quality.fact_accuracy(base, tok, world.items)
    ppl = quality.perplexity(base, tok, world.heldout_texts(), world.pretrain_texts())
    return {"base": {"facts": facts, "train_fact_accuracy": facts["train"]["all"],
                     "heldout_perplexity": ppl,
                     "patch_example": quality.patch_example(base, tok)},
            "sft": {"chat_heldout": quality.chat_quality(sft, tok, chat_rows),
                    "facts_train": quality.fact_accuracy(sft, tok, world.split("train"))
                    ["train"]["all"]}}


