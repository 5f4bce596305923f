"""Steering-vector training: reprlab vs steering-vectors 0.12, same model, same pairs.

Trains mean-difference (and PCA) steering vectors for every block of a GPT-2-small-sized model
(random weights built from a config, bundled MiniLM tokenizer; nothing downloaded) from the
built-in contrast pairs, with reprlab and with steering-vectors, and prints medians of CPU
time and wall time (the two timed in rotation), the load average, their ratio, and the
per-layer cosine between the directions.

Fair set-up: steering-vectors gets the base model without the language-model head (reprlab's
forward stops after the deepest requested block, so the head would be work only the peer
does; ``--peer-head`` times the peer with the head, as users usually call it), every batch
size in ``--batch-sizes`` is timed for both sides (pairs per batch; each side's best is
compared), one thread on both sides, then each side at its best batch size at one thread, two
threads and its default in one rotation: reprlab's default is its thread policy (per batch,
`reprlab._threads.for_forward`; the script prints what it chose), steering-vectors' is torch's
(every core).

    python benchmarks/steering.py --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, policy_summary, rotate, table, threads  # noqa: E402


def build_model(hidden: int, layers: int, seed: int = 0):
    import transformers as t

    from reprlab.models import LoadedModel, bundled_model_path

    tok = t.AutoTokenizer.from_pretrained(str(bundled_model_path()))
    torch.manual_seed(seed)
    cfg = t.GPT2Config(n_embd=hidden, n_layer=layers, n_head=12, n_positions=512,
                       vocab_size=tok.vocab_size, pad_token_id=0, bos_token_id=101,
                       eos_token_id=102)
    model = t.GPT2LMHeadModel(cfg).eval()
    return LoadedModel.from_hf(model, tok, name=f"gpt2-random-{hidden}x{layers}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-threads", type=int, default=2,
                    help="rounds of the one / two threads / default rotation")
    ap.add_argument("--batch-sizes", default="16,60", help="pairs per batch, both sides")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--pairs", default="builtin:pairs-sentiment")
    ap.add_argument("--peer-head", action="store_true",
                    help="also time steering-vectors on the model with its LM head")
    args = ap.parse_args()

    import steering_vectors as sv

    from reprlab.data import load_dataset
    from reprlab.steering import SteeringFitter

    print(machine())
    pairs = load_dataset(args.pairs, kind="pairs")
    lm = build_model(args.hidden, args.layers)
    samples = list(zip(pairs.positive, pairs.negative, strict=True))
    sv_tok = copy.deepcopy(lm.tokenizer)
    sv_tok.model_input_names = ["input_ids", "attention_mask"]  # GPT-2 would embed token types
    base = lm.model.transformer  # the blocks without the LM head
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    out = {}

    def ours(method: str, bs: int):
        # reprlab batches positives and negatives together: bs pairs = 2 * bs texts
        out["ours", method] = SteeringFitter(lm, "layers.*", method, "last", 2 * bs,
                                             progress=False).fit_pairs(pairs.positive,
                                                                       pairs.negative)

    def theirs(agg: str, bs: int, model=base):
        a = sv.mean_aggregator() if agg == "mean" else sv.pca_aggregator()
        out["sv", agg] = sv.train_steering_vector(model, sv_tok, samples, layers=None,
                                                  batch_size=bs, aggregator=a)

    for name, method in (("mean", "mean-diff"), ("pca", "pca-center")):
        print(f"\n== {name} ({method} vs steering-vectors {name}_aggregator), "
              f"{len(pairs)} pairs, random GPT-2 {args.hidden}d x {args.layers} ==")
        best: dict[str, int] = {}
        for rows, reps in (([1], args.repeats), ([1, 2, None], args.repeats_threads)):
            fns, setups = {}, {}
            for t in rows:
                tag = "default" if t is None else f"{t} thread{'s' if t > 1 else ''}"
                for bs in sizes:
                    # after the one-thread round, each side only at its best batch size
                    if not best or best["reprlab"] == bs:
                        fns[f"reprlab, batch {bs}, {tag}"] = lambda m=method, bs=bs: ours(m, bs)
                        setups[f"reprlab, batch {bs}, {tag}"] = lambda t=t: threads(t)
                    if not best or best["steering-vectors"] == bs:
                        fns[f"steering-vectors, batch {bs}, {tag}"] = (
                            lambda a=name, bs=bs: theirs(a, bs))
                        setups[f"steering-vectors, batch {bs}, {tag}"] = lambda t=t: threads(t)
                if args.peer_head and name == "mean" and not best:
                    fns[f"steering-vectors with LM head, batch {sizes[0]}, {tag}"] = (
                        lambda bs=sizes[0]: theirs("mean", bs, lm.model))
                    setups[f"steering-vectors with LM head, batch {sizes[0]}, {tag}"] = (
                        lambda t=t: threads(t))
            policy_summary()  # forget earlier rounds
            times = rotate(fns, repeats=reps, warmup=1 if reps > 1 else 0, setups=setups)
            ref = min((k for k in times if k.startswith("reprlab")),
                      key=lambda k: times[k]["cpu"])
            if best:  # the thread rotation: ratios to reprlab at one thread
                ref = next(k for k in times if k.startswith("reprlab") and "1 thread" in k)
            print(f"medians of {reps} round(s) in rotation; ratios to "
                  f"{'reprlab at one thread' if best else 'the best reprlab row'}")
            print(table(list(times.items()), ref=ref))
            if None in rows:
                print(policy_summary())
            if not best:
                for side in ("reprlab", "steering-vectors"):
                    k = min((k for k in times if k.startswith(side + ", batch")),
                            key=lambda k: times[k]["cpu"])
                    best[side] = int(k.split("batch ")[1].split(",")[0])
        cos = []
        v_ours, v_sv = out["ours", method], out["sv", name]
        for layer, ref_v in sorted(v_sv.layer_activations.items()):
            mine = v_ours.raw(f"layers.{layer}") if name == "mean" else \
                v_ours.direction(f"layers.{layer}")
            cos.append(float(torch.nn.functional.cosine_similarity(
                mine.double(), ref_v.double(), dim=0)))
        # PCA signs: reprlab/repeng flip by the majority of pairs, steering-vectors by the mean
        # projection; the axes agree, the chosen signs can differ on an odd layer
        flips = sum(c < 0 for c in cos) if name == "pca" else 0
        cos = [abs(c) for c in cos] if name == "pca" else cos
        print(f"  min per-layer {'|cos|' if name == 'pca' else 'cos'} {min(cos):.6f}"
              f"{f', sign flips {flips}' if name == 'pca' else ''}")
        print(json.dumps({"aggregator": name, "cosine_per_layer": [round(c, 6) for c in cos]}))


if __name__ == "__main__":
    main()
