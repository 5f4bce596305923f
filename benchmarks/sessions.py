"""Sessions: local backend (reprlab hooks) vs nnsight backend (local execution), same plans.

Two workloads on a small random GPT-2 (hidden 256, 4 layers, bundled MiniLM tokenizer,
offline): a session of K patching traces (read the last block of a source prompt, write it
into layer 1 of K targets, save the last-position logits), and a probe trained inside one
session (64 texts, batch 16, 3 epochs, forward stopped after the probed layer).

    python benchmarks/sessions.py [--k 16] [--repeats 5]

Both backends run in rotation at one thread, then at one, two threads and the default, and the
script prints the medians of CPU time and wall time, the load average and the ratio
nnsight / local. The default is what a user of `reprlab.session` gets without setting
anything: both backends run here apply reprlab's thread policy (the local one per forward,
the nnsight one once per session, sized by its largest forward); the script prints what the
policy chose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, policy_summary, rotate, table, threads  # noqa: E402


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
    ap.add_argument("--repeats-threads", type=int, default=3,
                    help="rounds of the one / two threads / default rotation")
    args = ap.parse_args()
    print(machine())
    lm = small_model()
    a, b = patch_session(lm, "local", 2), patch_session(lm, "nnsight", 2)
    assert all(torch.equal(a[k], b[k]) for k in a), "backends disagree"
    for name, fn in (
        (f"patch session, K={args.k} traces", lambda be: patch_session(lm, be, args.k)),
        ("probe session, 64 texts x 3 epochs", lambda be: probe_session(lm, be)),
    ):
        print(f"\n== {name} ==")
        for rows, reps in (([1], args.repeats), ([1, 2, None], args.repeats_threads)):
            fns, setups = {}, {}
            for t in rows:
                tag = "default" if t is None else f"{t} thread{'s' if t > 1 else ''}"
                for be in ("local", "nnsight"):
                    fns[f"{be}, {tag}"] = lambda fn=fn, be=be: fn(be)
                    setups[f"{be}, {tag}"] = lambda t=t: threads(t)
            policy_summary()  # forget the warm-up of earlier rounds
            times = rotate(fns, repeats=reps, setups=setups)
            print(f"medians of {reps} rounds in rotation")
            print(table(list(times.items()), ref=next(iter(times))))
            if None in rows:
                print(policy_summary())


if __name__ == "__main__":
    main()
