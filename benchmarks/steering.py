"""Steering-vector training: reprlab vs steering-vectors 0.12, same model, same pairs.

Trains mean-difference (and PCA) steering vectors for every block of a GPT-2-small-sized model
(random weights built from a config, bundled MiniLM tokenizer; nothing downloaded) from the
built-in contrast pairs, with reprlab and with steering-vectors, and prints the median wall
time of each, their ratio, and the per-layer cosine between the directions.

    python benchmarks/steering.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


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


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per batch for both")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--pairs", default="builtin:pairs-sentiment")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import steering_vectors as sv

    from reprlab.data import load_dataset
    from reprlab.steering import SteeringFitter

    pairs = load_dataset(args.pairs, kind="pairs")
    lm = build_model(args.hidden, args.layers)
    samples = list(zip(pairs.positive, pairs.negative, strict=True))
    sv_tok = copy.deepcopy(lm.tokenizer)
    sv_tok.model_input_names = ["input_ids", "attention_mask"]  # GPT-2 would embed token types

    def ours(method: str):
        # reprlab batches positives and negatives together: batch_size texts = pairs * 2
        return SteeringFitter(lm, "layers.*", method, "last", 2 * args.batch_size,
                              progress=False).fit_pairs(pairs.positive, pairs.negative)

    def theirs(aggregator, batch_size: int):
        return sv.train_steering_vector(lm.model, sv_tok, samples, layers=None,
                                        batch_size=batch_size, aggregator=aggregator)

    ours("mean-diff")  # warm-up (allocator, kernels) for both sides
    theirs(sv.mean_aggregator(), args.batch_size)
    rows = {}
    for name, our_method, agg in (("mean", "mean-diff", sv.mean_aggregator()),
                                  ("pca", "pca-center", sv.pca_aggregator())):
        t_ours, ts_ours, v_ours = timed(lambda m=our_method: ours(m), args.repeats)
        t_sv, ts_sv, v_sv = timed(lambda a=agg: theirs(a, args.batch_size), args.repeats)
        cos = []
        for layer, ref in sorted(v_sv.layer_activations.items()):
            mine = v_ours.raw(f"layers.{layer}") if name == "mean" else \
                v_ours.direction(f"layers.{layer}")
            cos.append(float(torch.nn.functional.cosine_similarity(
                mine.double(), ref.double(), dim=0)))
        # PCA signs: reprlab/repeng flip by the majority of pairs, steering-vectors by the mean
        # projection; the axes agree, the chosen signs can differ on an odd layer
        flips = sum(c < 0 for c in cos) if name == "pca" else 0
        cos = [abs(c) for c in cos] if name == "pca" else cos
        rows[name] = {"reprlab_s": t_ours, "steering_vectors_s": t_sv,
                      "speedup": t_sv / t_ours, "min_cosine": min(cos),
                      "cosine_per_layer": [round(c, 6) for c in cos], "sign_flips": flips,
                      "reprlab_runs": ts_ours, "steering_vectors_runs": ts_sv}
    t_sv1, _, _ = timed(lambda: theirs(sv.mean_aggregator(), 1), max(1, args.repeats // 2))
    rows["mean"]["steering_vectors_default_bs1_s"] = t_sv1
    rows["mean"]["speedup_vs_default_bs1"] = t_sv1 / rows["mean"]["reprlab_s"]
    print(f"model: random GPT-2 {args.hidden}d x {args.layers} layers, "
          f"{len(pairs)} pairs ({args.pairs}), batch {args.batch_size} pairs, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'aggregator':<12}{'reprlab s':>11}{'sv 0.12 s':>11}{'ratio':>8}{'min |cos|':>10}"
          f"{'sign flips':>11}")
    for name, r in rows.items():
        print(f"{name:<12}{r['reprlab_s']:>11.3f}{r['steering_vectors_s']:>11.3f}"
              f"{r['speedup']:>7.2f}x{r['min_cosine']:>10.6f}{r['sign_flips']:>11d}")
    print(f"steering-vectors with its default batch_size=1: {t_sv1:.3f} s "
          f"({rows['mean']['speedup_vs_default_bs1']:.2f}x slower than reprlab)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
