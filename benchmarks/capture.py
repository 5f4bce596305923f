"""Capture speed: reprlab vs a plain HF forward vs nnsight 0.8, in one process.

(a) identical batches, every block output kept: tokens/s of reprlab hooks, of a plain forward
    with output_hidden_states=True, and of nnsight saving the same outputs; plus reprlab with
    only an early layer requested (stop-early).
(b) end to end, dataset with mixed lengths -> pooled rows on disk: `reprlab.capture` vs the
    usual nnsight recipe (batches in dataset order, trace + save, pool, concatenate, write).

    python benchmarks/capture.py [--rows 1024] [--repeats 5] [--models minilm] [--parts a]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import compare, mixed_texts  # noqa: E402

from reprlab import hooks  # noqa: E402
from reprlab.capture import capture  # noqa: E402
from reprlab.models import LoadedModel, load_model  # noqa: E402
from reprlab.positions import pool  # noqa: E402
from reprlab.sites import resolve_sites  # noqa: E402


def gpt2_small_random() -> LoadedModel:
    import transformers as t

    minilm = load_model("minilm")
    tok = minilm.tokenizer
    torch.manual_seed(0)
    cfg = t.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=tok.vocab_size,
                       n_positions=512)
    return LoadedModel.from_hf(t.GPT2LMHeadModel(cfg), tok, name="gpt2-small-random")


def blocks_of(nn_model, path: str):
    """The nnsight envoy of the block list (attribute walk, as users write it)."""
    obj = nn_model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def identical_batches(lm: LoadedModel, texts: list[str], batch: int, repeats: int) -> dict:
    from nnsight import NNsight

    encs = [lm.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    n_tok = sum(int(e["attention_mask"].sum()) for e in encs)
    sites = resolve_sites(lm, "layers.*")
    early = resolve_sites(lm, "layers.1")
    nn_model = NNsight(lm.model)
    blocks = blocks_of(nn_model, lm.arch.layers_path)
    n_layers = lm.arch.n_layers

    def plain():
        with torch.inference_mode():
            for e in encs:
                lm.model(**e, output_hidden_states=True)

    def ours():
        with torch.inference_mode():
            for e in encs:
                with hooks.record(lm, sites):
                    lm.model(**e)

    def ours_early():
        with torch.inference_mode():
            for e in encs:
                with hooks.record(lm, early, stop=True):
                    hooks.run_until_stop(lambda e=e: lm.model(**e))

    def nnsight_run():
        with torch.inference_mode():
            for e in encs:
                saved = []
                with nn_model.trace(**e):
                    for i in range(n_layers):
                        saved.append(blocks[i].output.save())

    times = compare({"plain": plain, "reprlab": ours, "nnsight": nnsight_run,
                     "reprlab_layer1_only": ours_early}, repeats)
    return {k: n_tok / v for k, v in times.items()}


def end_to_end(lm: LoadedModel, texts: list[str], batch: int, repeats: int) -> dict:
    from nnsight import NNsight
    from safetensors.torch import save_file

    nn_model = NNsight(lm.model)
    blocks = blocks_of(nn_model, lm.arch.layers_path)
    n_layers = lm.arch.n_layers
    tmp = Path(tempfile.mkdtemp())

    def nnsight_recipe():
        per_layer: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                e = lm.encode(texts[i:i + batch])
                saved = []
                with nn_model.trace(**e):
                    for j in range(n_layers):
                        saved.append(blocks[j].output.save())
                m = e["attention_mask"]
                for j, h in enumerate(saved):
                    for p in ("last", "mean"):
                        per_layer.setdefault(f"layers.{j}|{p}", []).append(pool(h, m, p))
        save_file({k: torch.cat(v) for k, v in per_layer.items()}, str(tmp / "nnsight.safetensors"))

    def ours():
        out = tmp / "reprlab"
        shutil.rmtree(out, ignore_errors=True)
        capture(lm, texts, "layers.*", "last,mean", out, batch_size=batch, progress=False)

    t = compare({"nnsight": nnsight_recipe, "ours": ours}, repeats, warmup=0)
    t_nn, t_ours = t["nnsight"], t["ours"]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"nnsight_recipe_s": t_nn, "reprlab_s": t_ours, "speedup": t_nn / t_ours}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="minilm,gpt2-small-random")
    ap.add_argument("--parts", default="a,b", help="a: identical batches; b: end to end")
    args = ap.parse_args()
    torch.manual_seed(0)
    import warnings

    warnings.filterwarnings("ignore")
    short = [f"The city of {c} is in {k}." for c, k in
             [("Paris", "France"), ("Lyon", "Japan"), ("Osaka", "Japan"), ("Lima", "Peru")]] * 64
    for name in args.models.split(","):
        lm = load_model("minilm") if name == "minilm" else gpt2_small_random()
        texts = short[: args.batches * args.batch_size]
        t0 = time.perf_counter()
        if "a" in args.parts:
            a = identical_batches(lm, texts, args.batch_size, args.repeats)
            print(f"\n== {name}: (a) identical batches, all {lm.arch.n_layers} block outputs, "
                  f"median of {args.repeats} ==")
            for k, v in a.items():
                print(f"  {k:<22} {v:>10.0f} tokens/s")
            print(f"  reprlab / plain      {a['reprlab'] / a['plain']:.3f}x")
            print(f"  reprlab / nnsight    {a['reprlab'] / a['nnsight']:.3f}x")
            print(f"  layer-1-only / plain {a['reprlab_layer1_only'] / a['plain']:.3f}x")
        if "b" in args.parts:
            mixed = mixed_texts(args.rows)
            b = end_to_end(lm, mixed, args.batch_size, max(1, args.repeats // 2))
            print(f"== {name}: (b) end to end, {args.rows} mixed-length rows -> last+mean of "
                  "every block on disk ==")
            print(f"  nnsight recipe {b['nnsight_recipe_s']:.2f}s  reprlab {b['reprlab_s']:.2f}s  "
                  f"speedup {b['speedup']:.2f}x   ({time.perf_counter() - t0:.0f}s total)")

if __name__ == "__main__":
    main()
