"""Training throughput of the toy build's loop against the Hugging Face ``Trainer``.

Same model (the ``default`` toy preset: Llama, hidden 256, 4 layers), same pre-tokenised,
length-bucketed batches in the same order, same batch size, AdamW with the same learning
rate, one torch thread. Each repeat trains a fresh copy of one initialisation for ``--steps``
steps on each side, the sides alternating; medians of wall and CPU time.

    python benchmarks/toy_train.py --repeats 5 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from transformers import Trainer, TrainingArguments

    from reprlab.toy import tasks
    from reprlab.toy.build import PRESETS, _make_model
    from reprlab.toy.tokenizer import build_tokenizer
    from reprlab.toy.train import StepBatches, encode_texts, make_optimizer, run_phase
    from reprlab.toy.world import World

    transformers.logging.set_verbosity_error()
    p = PRESETS[args.preset]
    world = World()
    tok = build_tokenizer(tasks.vocabulary_texts(world))
    init = _make_model(p, tok, seed=0)
    batches = StepBatches(encode_texts(tok, world.pretrain_texts()), p.batch_size, 0, "base",
                          tok.pad_token_id)
    fixed = [batches(s) for s in range(args.steps)]
    tokens = sum(int(b["attention_mask"].sum()) for b in fixed)

    def ours() -> float:
        model = copy.deepcopy(init)
        opt, sched = make_optimizer(model, p.lr, args.steps, 2, p.weight_decay)
        return run_phase(model, lambda s: fixed[s], opt, sched, start=0, steps=args.steps)

    class Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(fixed)

        def __getitem__(self, i: int) -> dict:
            return fixed[i]

    def theirs() -> float:
        model = copy.deepcopy(init)
        targs = TrainingArguments(
            output_dir="/tmp/reprlab-bench-trainer", per_device_train_batch_size=1,
            max_steps=args.steps, learning_rate=p.lr, weight_decay=p.weight_decay,
            adam_beta2=0.98, warmup_steps=2, lr_scheduler_type="cosine", max_grad_norm=1.0,
            logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=Batches(),
                          data_collator=lambda rows: rows[0])
        return trainer.train().training_loss

    sides = {"reprlab toy loop": ours, "HF Trainer": theirs}
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    for fn in sides.values():  # warm-up (imports, allocator)
        fn()
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"toy '{args.preset}' ({sum(x.numel() for x in init.parameters()) / 1e6:.2f}M "
          f"parameters), {args.steps} steps x batch {p.batch_size} = {tokens} tokens, "
          f"{args.threads} thread(s), load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    for name in sides:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:<18} {tokens / w:8.0f} tokens/s wall   {tokens / c:8.0f} tokens/s CPU")
    rw = statistics.median(wall["HF Trainer"]) / statistics.median(wall["reprlab toy loop"])
    rc = statistics.median(cpu["HF Trainer"]) / statistics.median(cpu["reprlab toy loop"])
    print(f"ratio (Trainer time / ours): {rw:.2f}x wall, {rc:.2f}x CPU")


if __name__ == "__main__":
    main()
