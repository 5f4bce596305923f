"""Capture speed: reprlab vs a plain HF forward vs nnsight 0.8, in one process.

(a) identical batches, every block output kept: tokens/s of reprlab hooks, of a plain forward
    with output_hidden_states=True, and of nnsight saving the same outputs; plus reprlab with
    only an early layer requested (stop-early).
(b) end to end, dataset with mixed lengths -> pooled rows on disk: `reprlab.capture` vs the
    usual nnsight recipe (batches in dataset order, trace + save, pool, concatenate, write)
    and vs a careful nnsight user (the same length-sorted batches as reprlab, and
    ``tracer.stop()`` after the last block so the LM head is skipped): the first gap is
    padding and the head, the second is what remains. Every batch size in
    ``--batch-sizes`` is timed for every variant (each side's best is what to compare).

All variants run in rotation at one thread (medians of CPU time and wall time, load
printed), then at two threads and at the default. The default is what a user gets without
setting anything: `reprlab.capture` applies reprlab's thread policy to each batch
(`reprlab._threads.for_forward`: one thread unless the batch's largest linear product is big
enough, then the cores the load leaves free); the plain forward, nnsight and the bare
`hooks.record` of part (a) run at torch's own default (every core). Part (b) times each
side's best batch size at one thread, two threads and the default in one rotation, and
prints what the policy chose.

    python benchmarks/capture.py [--rows 512] [--repeats 3] [--repeats-threads N]
                                 [--models minilm] [--parts a,b]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, mixed_texts, policy_summary, rotate, table, threads  # noqa: E402

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

    variants = {"plain forward": plain, "reprlab hooks": ours, "nnsight": nnsight_run,
                "reprlab layer 1 only": ours_early}
    for rows, reps in (([1], repeats), ([2, None], max(1, repeats // 2))):
        fns, setups = {}, {}
        for t in rows:
            tag = "default" if t is None else f"{t} thread{'s' if t > 1 else ''}"
            for k, fn in variants.items():
                fns[f"{k}, {tag}"] = fn
                setups[f"{k}, {tag}"] = lambda t=t: threads(t)
        times = rotate(fns, repeats=reps, setups=setups)
        print(f"  {n_tok} tokens; medians of {reps} round(s) in rotation; ratios to the plain "
              "forward")
        print(table(list(times.items()), ref=next(iter(times))))


def end_to_end(lm: LoadedModel, texts: list[str], sizes: list[int], repeats: int,
               repeats_threads: int) -> None:
    from nnsight import NNsight
    from safetensors.torch import save_file

    nn_model = NNsight(lm.model)
    blocks = blocks_of(nn_model, lm.arch.layers_path)
    n_layers = lm.arch.n_layers
    tmp = Path(tempfile.mkdtemp())
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    by_length = sorted(range(len(texts)), key=lambda i: lengths[i])

    def nnsight_recipe(batch: int, careful: bool):
        order = by_length if careful else list(range(len(texts)))
        per_layer: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                e = lm.encode([texts[j] for j in order[i:i + batch]])
                saved = []
                with nn_model.trace(**e) as tracer:
                    for j in range(n_layers):
                        saved.append(blocks[j].output.save())
                    if careful:
                        tracer.stop()  # skip the LM head
                m = e["attention_mask"]
                for j, h in enumerate(saved):
                    h = h[0] if isinstance(h, tuple) else h
                    for p in ("last", "mean"):
                        per_layer.setdefault(f"layers.{j}|{p}", []).append(pool(h, m, p))
        back = torch.tensor(order).argsort()
        save_file({k: torch.cat(v)[back].contiguous() for k, v in per_layer.items()},
                  str(tmp / "nnsight.safetensors"))

    def ours(batch: int):
        out = tmp / "reprlab"
        shutil.rmtree(out, ignore_errors=True)
        capture(lm, texts, "layers.*", "last,mean", out, batch_size=batch, progress=False)

    def variants(t, tag, batch_sizes):
        fns, setups = {}, {}
        for b in batch_sizes:
            fns[f"reprlab capture, batch {b}, {tag}"] = lambda b=b: ours(b)
            fns[f"nnsight usual recipe, batch {b}, {tag}"] = lambda b=b: nnsight_recipe(b, False)
            fns[f"nnsight careful (sorted + stop), batch {b}, {tag}"] = (
                lambda b=b: nnsight_recipe(b, True))
        for k in fns:
            setups[k] = lambda t=t: threads(t)
        return fns, setups

    fns, setups = variants(1, "1 thread", sizes)
    times = rotate(fns, repeats=repeats, warmup=0, setups=setups)
    best = {side: min((k for k in times if k.startswith(side)), key=lambda k: times[k]["cpu"])
            for side in ("reprlab", "nnsight usual", "nnsight careful")}
    print(f"  {len(texts)} rows; medians of {repeats} round(s) in rotation, one thread; "
          "ratios to reprlab's best batch size")
    print(table(list(times.items()), ref=best["reprlab"]))
    pick = {side: int(k.split("batch ")[1].split(",")[0]) for side, k in best.items()}
    fns, setups = {}, {}
    for t in (1, 2, None):
        tag = {1: "1 thread", 2: "2 threads", None: "default"}[t]
        f, s_ = variants(t, tag, sorted(set(pick.values())))
        keep = {k: v for k, v in f.items()
                if any(k.startswith(side) and f"batch {pick[side]}," in k for side in pick)}
        fns.update(keep)
        setups.update({k: s_[k] for k in keep})
    policy_summary()  # forget choices made before this rotation
    times2 = rotate(fns, repeats=repeats_threads, warmup=0, setups=setups)
    print(f"  each variant at its best batch size at one thread, two threads and the default "
          f"(reprlab: its policy; nnsight: torch's), {repeats_threads} round(s) in rotation; "
          "ratios to reprlab at one thread:")
    print(table(list(times2.items()), ref=best["reprlab"]))
    print("  " + policy_summary())
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="part (a)")
    ap.add_argument("--batch-sizes", default="16,32,64", help="part (b), every variant")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-threads", type=int, default=0,
                    help="rounds of part (b)'s 1 / 2 / default rotation (0: --repeats)")
    ap.add_argument("--models", default="minilm", help="minilm,gpt2-small-random")
    ap.add_argument("--parts", default="a,b", help="a: identical batches; b: end to end")
    args = ap.parse_args()
    torch.manual_seed(0)
    import warnings

    warnings.filterwarnings("ignore")
    print(machine())
    short = [f"The city of {c} is in {k}." for c, k in
             [("Paris", "France"), ("Lyon", "Japan"), ("Osaka", "Japan"), ("Lima", "Peru")]] * 64
    for name in args.models.split(","):
        lm = load_model("minilm") if name == "minilm" else gpt2_small_random()
        texts = short[: args.batches * args.batch_size]
        if "a" in args.parts:
            print(f"\n== {name}: (a) identical batches ({args.batches} x {args.batch_size}), "
                  f"all {lm.arch.n_layers} block outputs ==")
            identical_batches(lm, texts, args.batch_size, args.repeats)
        if "b" in args.parts:
            print(f"\n== {name}: (b) end to end, {args.rows} mixed-length rows -> last + mean "
                  "of every block on disk ==")
            end_to_end(lm, mixed_texts(args.rows), [int(b) for b in args.batch_sizes.split(",")],
                       args.repeats, args.repeats_threads or args.repeats)


if __name__ == "__main__":
    main()
