"""DPO training steps: reprlab vs TRL 1.16 DPOTrainer, same model, LoRA, batch and length.

A Llama of hidden 512 and 6 layers (random weights from a config, bundled MiniLM tokenizer;
nothing downloaded), LoRA r=8 on every linear layer, 4 pairs of 128 tokens (prompt +
completion), AdamW, one torch thread. Both start from the same LoRA initialisation (TRL's,
copied into reprlab) with a non-zero B, so the losses are not the trivial log 2, and the loss
of every step is compared. Three trainers run in rotation, several rounds: TRL (reference =
adapter disabled, a second forward every step), reprlab with the reference live (the same
work), and reprlab with the cached reference (no reference forward). Step time is measured
from the start to the end of each optimiser step (wall and CPU), the first step of each run
excluded.

    python benchmarks/dpo.py --rounds 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(seed: int, hidden: int, layers: int, inter: int):
    import transformers as t

    from reprlab.models import LoadedModel, bundled_model_path

    tok = t.AutoTokenizer.from_pretrained(str(bundled_model_path()))
    tok.eos_token, tok.bos_token = "[SEP]", "[CLS]"
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] "
                         "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    torch.manual_seed(seed)
    cfg = t.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
                        num_key_value_heads=8, intermediate_size=inter,
                        vocab_size=tok.vocab_size, pad_token_id=0, bos_token_id=101,
                        eos_token_id=102, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = t.LlamaForCausalLM(cfg)
    return LoadedModel.from_hf(model, tok, name=f"llama-{hidden}x{layers}")


def rows(n: int, prompt_words: int, answer_words: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    vocab = ("river city bridge garden market museum forest lake train bread cheese wine "
             "history mountain village quiet street old new blue green red small large").split()

    def words(k):
        return " ".join(rng.choice(vocab) for _ in range(k))
    return [{"prompt": words(prompt_words), "chosen": words(answer_words),
             "rejected": words(answer_words)} for _ in range(n)]


class StepClock:
    """A TrainerCallback timing each optimiser step (wall and CPU)."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_begin(self, *a, **k):
                clock._t, clock._c = time.perf_counter(), time.process_time()

            def on_step_end(self, *a, **k):
                clock.wall.append(time.perf_counter() - clock._t)
                clock.cpu.append(time.process_time() - clock._c)
        return CB()


def run_trl(data, steps, work, model_kw):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    lm = build(0, **model_kw)
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in data]
    args = DPOConfig(output_dir=str(work / "trl"), report_to=[], bf16=False,
                     gradient_checkpointing=False, use_cpu=True, beta=0.1, max_length=1024,
                     logging_steps=1, save_strategy="no", per_device_train_batch_size=len(data),
                     learning_rate=1e-4, max_steps=steps, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, disable_tqdm=True,
                     dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=lm.model, args=args, train_dataset=Dataset.from_list(conv),
                         processing_class=lm.tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                lora_dropout=0.0))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    init = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    losses = []
    inner = trainer.compute_loss

    def record(*a, **k):
        loss = inner(*a, **k)
        losses.append(float(loss.detach()))
        return loss
    trainer.compute_loss = record
    clock = StepClock()
    trainer.add_callback(clock.callback())
    trainer.train()
    tokens = [int(sum(len(x["prompt_ids"]) * 2 + len(x["chosen_ids"]) + len(x["rejected_ids"])
                      for x in trainer.train_dataset))] * steps
    return {"wall": clock.wall, "cpu": clock.cpu, "losses": losses, "tokens": tokens}, init


def run_ours(data, steps, work, model_kw, init, cache: str, tag: str):
    from reprlab.prefs import train

    lm = build(0, **model_kw)
    res = train(lm, data, out=work / tag, steps=steps, batch_size=len(data), lr=1e-4,
                schedule="constant", max_grad_norm=1.0, ref_cache=cache, progress=False,
                max_length=1024, lora_r=8, lora_alpha=16, lora_targets=("all-linear",),
                adapter_state=init)
    return {"wall": [r["seconds"] for r in res.log], "cpu": [r["cpu_seconds"] for r in res.log],
            "losses": res.losses, "tokens": [r["tokens"] for r in res.log],
            "reference": res.reference}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=58)
    ap.add_argument("--answer-words", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    model_kw = {"hidden": a.hidden, "layers": a.layers, "inter": a.intermediate}
    n_params = sum(p.numel() for p in build(0, **model_kw).model.parameters())
    data = rows(a.pairs, a.prompt_words, a.answer_words)
    out: dict[str, dict[str, list]] = {k: {"wall": [], "cpu": [], "tokens": []}
                                       for k in ("trl", "reprlab", "reprlab+cache")}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = str(work / "refcache")
        for r in range(a.rounds):
            trl, init = run_trl(data, a.steps, work / f"r{r}", model_kw)
            ours = run_ours(data, a.steps, work / f"r{r}", model_kw, init, "off", "live")
            if r == 0:  # fill the cache once; later rounds (and seeds) only read it
                run_ours(data, 1, work / "fill", model_kw, init, cache, "fill")
            cached = run_ours(data, a.steps, work / f"r{r}", model_kw, init, cache, "cached")
            for k, v in (("trl", trl), ("reprlab", ours), ("reprlab+cache", cached)):
                for f in ("wall", "cpu", "tokens"):
                    out[k][f] += v[f][1:]  # the first step of a run warms caches up
                losses[k] = v["losses"]
            print(f"round {r + 1}/{a.rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    tok = out["trl"]["tokens"][0]
    print(f"model: Llama hidden {a.hidden} x {a.layers} layers, {n_params / 1e6:.1f}M parameters "
          f"(vocab 30522), LoRA r=8 all-linear; {a.pairs} pairs, {tok // (2 * a.pairs)} tokens "
          f"per sequence ({tok} per step); torch threads {a.threads}; "
          f"load avg {os.getloadavg()[0]:.2f}")
    summary = {}
    for k, v in out.items():
        wall, cpu = statistics.median(v["wall"]), statistics.median(v["cpu"])
        summary[k] = {"step_wall_s": wall, "step_cpu_s": cpu,
                      "tokens_per_s": tok / wall, "tokens_per_cpu_s": tok / cpu}
    base = summary["trl"]
    for k, s in summary.items():
        print(f"  {k:<14} {s['tokens_per_s']:8.1f} tokens/s  (step {s['step_wall_s']:.3f} s "
              f"wall, {s['step_cpu_s']:.3f} s CPU)  x{s['tokens_per_s'] / base['tokens_per_s']:.2f}"
              f" wall, x{s['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f} CPU")
    diffs = {k: max(abs(x - y) for x, y in zip(losses[k], losses["trl"], strict=True))
             for k in ("reprlab", "reprlab+cache")}
    print("losses per step, TRL:    ", ", ".join(f"{x:.6f}" for x in losses["trl"]))
    print("losses per step, reprlab:", ", ".join(f"{x:.6f}" for x in losses["reprlab"]))
    print(f"max |loss - TRL loss| over {a.steps} steps: live {diffs['reprlab']:.2e}, cached "
          f"{diffs['reprlab+cache']:.2e}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "losses": losses,
                                            "max_loss_diff": diffs, "params": n_params}, indent=2))


if __name__ == "__main__":
    main()
