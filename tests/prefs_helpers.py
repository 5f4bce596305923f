"""Shared helpers of the preference-training tests: tiny chat models, TRL trainers and a
simulated crash."""

from __future__ import annotations

from pathlib import Path

from conftest import make_tiny

#: a small chat template in the usual shape (role markers, an end-of-turn token)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


class Killed(Exception):  # noqa: N818 - stands for the crash it simulates
    """Raised from a training run's ``on_step`` callback: the run stops as a crash would."""


def kill_at(step: int):
    """An ``on_step`` callback that raises :class:`Killed` once the run reports ``step``."""
    def on_step(rec: dict) -> None:
        if rec["step"] == step:
            raise Killed
    return on_step


def chat_tiny(seed: int = 0, hidden: int = 32, layers: int = 2, template: bool = True):
    """A tiny random Llama with the MiniLM tokenizer, eos = [SEP] and a chat template."""
    lm = make_tiny("llama", hidden=hidden, layers=layers, seed=seed)
    tok = lm.tokenizer
    tok.eos_token = "[SEP]"
    tok.bos_token = "[CLS]"
    if template:
        tok.chat_template = CHAT_TEMPLATE
    return lm


def trl_dpo_trainer(lm, rows, out: Path, *, beta=0.1, lora_r=4, lora_alpha=8,
                    targets=("q_proj", "v_proj"), batch_size=2, lr=1e-3, steps=1,
                    max_length=128, precompute=False, conversational=True):
    """TRL's DPOTrainer on ``lm`` with LoRA, on CPU, no logging or checkpoints (chat rows)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), report_to=[], bf16=False, gradient_checkpointing=False,
                     use_cpu=True, beta=beta, max_length=max_length, logging_steps=1,
                     save_strategy="no", per_device_train_batch_size=batch_size,
                     learning_rate=lr, max_steps=steps, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1e9,
                     disable_tqdm=True, dataloader_num_workers=0, seed=0,
                     precompute_ref_log_probs=precompute)
    peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(targets),
                             lora_dropout=0.0)
    if conversational:
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    ds = Dataset.from_list([dict(r) for r in rows])
    return DPOTrainer(model=lm.model, args=args, train_dataset=ds, processing_class=lm.tokenizer,
                      peft_config=peft_config)
