"""Sessions: local backend (reprlab hooks) vs nnsight backend (local execution), same plans.

Two workloads on a small random GPT-2 (hidden 256, 4 layers, bundled MiniLM tokenizer,
offline): a session of K patching traces (read the last block of a source prompt, write it
into layer 1 of K targets, save the last-position logits), and a probe trained inside one
session (64 texts, batch 16, 3 epochs, forward stopped after the probed layer).

    python benchmarks/sessions.py [--k 16] [--repeats 5]

Prints the median wall time of each backend (the two run in rotation) and the ratio
nnsight / local.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import compare  # noqa: E402


def small_model():
    import transformers as t
    from transformers import AutoTokenizer

    from reprlab.models import LoadedModel, bundled_model_path

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    torch.manual_seed(0)
    cfg = t.GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=256,
                       vocab_size=tok.vocab_size, pad_token_id=0, bos_token_id=101,
                       eos_token_id=102)
    return LoadedModel.from_hf(t.AutoModelForCausalLM.from_config(cfg), tok, name="gpt2-small-rand")


def patch_session(lm, backend, k):
    import reprlab.sessions as S

    with S.session(lm, backend=backend) as s:
        with s.trace("The Eiffel Tower is in the city of") as t:
            h = t.read("layers.-1", pos=-1)
        for i in range(k):
            with s.trace(f"Buckingham Palace number {i} is in the city of") as t:
                t.write("layers.1", h, pos=-1)
                t.save(t.logits[:, -1], f"p{i}")
    return s.results


def probe_session(lm, backend):
    from reprlab.sessions.remote_probe import train_probe_in_session

    texts = [f"the city number {i} is {'north' if i % 2 else 'south'} of here" for i in range(64)]
    labels = [i % 2 for i in range(64)]
    return train_probe_in_session(lm, texts, labels, "layers.1", "last", epochs=3,
                                  batch_size=16, lr=0.01, seed=0, backend=backend,
                                  progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = small_model()
    a, b = patch_session(lm, "local", 2), patch_session(lm, "nnsight", 2)
    assert all(torch.equal(a[k], b[k]) for k in a), "backends disagree"
    rows = []
    for name, fn in (
        (f"patch session, K={args.k} traces", lambda be: patch_session(lm, be, args.k)),
        ("probe session, 64 texts x 3 epochs", lambda be: probe_session(lm, be)),
    ):
        t = compare({"local": lambda fn=fn: fn("local"), "nnsight": lambda fn=fn: fn("nnsight")},
                    args.repeats)
        rows.append((name, t["local"], t["nnsight"], t["nnsight"] / t["local"]))
    print(f"{'workload':40s} {'local s':>9s} {'nnsight s':>10s} {'ratio':>7s}")
    for name, lo, nn, ratio in rows:
        print(f"{name:40s} {lo:9.3f} {nn:10.3f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
