"""Quality figures of a toy model, measured at build time and kept in its manifest.

* **fact accuracy** per task and split: the greedy continuation of the prompt equals the
  answer (checked in one teacher-forced pass: greedy decoding reproduces the answer exactly
  when the arg-max at every answer position, given the answer so far, is the answer token);
* **held-out perplexity** against a unigram baseline fitted on the training text;
* **the patching example**: "The Eiffel Tower is in the city of" patched into "Buckingham
  Palace is in the city of" at ``layers.-2``, last position;
* for the SFT model, **chat accuracy and well-formedness** of greedy answers to held-out
  questions (an answer is well-formed when it is one short phrase ending in `` .<|end|>``;
  a sentence asked for in a mood is right when it is about the noun and every adjective has
  that mood).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from reprlab.toy.train import Example, collate, encode_chats

PATCH_SOURCE = "The Eiffel Tower is in the city of"
PATCH_TARGET = "Buckingham Palace is in the city of"


def _answer_examples(tok, prompts: Sequence[str], answers: Sequence[str]) -> list[Example]:
    p_enc = tok(list(prompts))["input_ids"]
    a_enc = tok([" " + a for a in answers], add_special_tokens=False)["input_ids"]
    return [Example(tuple(p + a), len(p)) for p, a in zip(p_enc, a_enc)]


@torch.no_grad()
def teacher_forced_match(model, examples: Sequence[Example], pad_id: int,
                         batch_size: int = 256) -> list[bool]:
    """Per example: does greedy decoding from ``ids[:loss_from]`` reproduce the rest?"""
    model.eval()
    device = next(model.parameters()).device
    out: list[bool] = []
    for s in range(0, len(examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(examples))))
        b = {k: v.to(device) for k, v in collate(examples, idx, pad_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        pred = logits[:, :-1].argmax(-1)
        gold = b["labels"][:, 1:]
        ok = (pred == gold) | (gold == -100)
        out += ok.all(-1).tolist()
    return out


def fact_accuracy(model, tok, items) -> dict[str, dict[str, float]]:
    """``{split: {task: accuracy, "all": accuracy, "n": rows}}``."""
    ex = _answer_examples(tok, [it.prompt for it in items], [it.answer + " ." for it in items])
    ok = teacher_forced_match(model, ex, tok.pad_token_id)
    by: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for it, good in zip(items, ok):
        by[it.split][it.task].append(good)
        by[it.split]["all"].append(good)
    return {split: {**{task: sum(v) / len(v) for task, v in tasks.items()},
                    "n": len(tasks["all"])} for split, tasks in sorted(by.items())}


@torch.no_grad()
def perplexity(model, tok, texts: Sequence[str], train_texts: Sequence[str]) -> dict:
    """Per-token perplexity of ``texts`` (all tokens after bos) for the model and for a
    unigram model of ``train_texts`` (add-one smoothing over the vocabulary)."""
    from reprlab.toy.train import encode_texts

    ex = encode_texts(tok, texts)
    device = next(model.parameters()).device
    nll, n = 0.0, 0
    for s in range(0, len(ex), 256):
        b = {k: v.to(device) for k, v in
             collate(ex, range(s, min(s + 256, len(ex))), tok.pad_token_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lp = logits[:, :-1].log_softmax(-1)
        gold = b["labels"][:, 1:]
        keep = gold != -100
        nll -= lp.gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].sum().item()
        n += int(keep.sum())
    counts = Counter(i for e in encode_texts(tok, train_texts) for i in e.ids[1:])
    total, v = sum(counts.values()), len(tok)
    uni = -sum(math.log((counts[i] + 1) / (total + v)) for e in ex for i in e.ids[1:])
    return {"model": math.exp(nll / n), "unigram": math.exp(uni / n), "tokens": n}


def patch_example(model, tok) -> dict:
    """Top prediction of the target before and after patching the source's last state."""
    from reprlab.models import LoadedModel
    from reprlab.sessions.patching import patch

    lm = LoadedModel.from_hf(model, tok, name="toy")
    res = patch(lm, PATCH_SOURCE, PATCH_TARGET, "layers.-2", pos=-1, k=3)
    top = {k: res[f"{k}_top"][0]["token"] for k in ("source", "target", "patched")}
    return {"source": PATCH_SOURCE, "target": PATCH_TARGET, "site": "layers.-2", "pos": -1,
            "top": top, "flipped": top["target"] != top["patched"]
            and top["patched"] == top["source"]}


@torch.no_grad()
def generate_answers(model, tok, questions: Sequence[str], max_new: int = 16) -> list[str]:
    """Greedy chat answers (text after ``<|assistant|>`` up to and including ``<|end|>``)."""
    device = next(model.parameters()).device
    out = []
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        for s in range(0, len(questions), 128):
            prompts = [tok.apply_chat_template([{"role": "user", "content": q}],
                                               add_generation_prompt=True, tokenize=False)
                       for q in questions[s:s + 128]]
            enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items() if k != "token_type_ids"}
            gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                out.append(tok.decode(row, skip_special_tokens=False)
                           .replace(tok.pad_token, "").strip())
    finally:
        tok.padding_side = old
    return out


_KINDS = (("Where is", "landmark_city"), ("Which country", "city_country"),
          ("What is", "arithmetic"), ("Is it true", "judge"), ("Is ", "compare"),
          ("Write a", "sentiment"))


def chat_kind(question: str) -> str:
    """The task of a chat question of the toy world."""
    return next((kind for prefix, kind in _KINDS if question.startswith(prefix)), "other")


def sentiment_answer_ok(question: str, answer: str) -> bool:
    """"Write a happy sentence about the food ." -> "the food was <positive> ..." with every
    adjective (the word after "was") of the asked mood."""
    from reprlab.toy.world import NEGATIVE, POSITIVE

    noun = question.split()[-2]
    words = answer.split()
    adjectives = [b for a, b in zip(words, words[1:]) if a == "was"]
    mood = POSITIVE if " happy " in question else NEGATIVE
    return words[:3] == ["the", noun, "was"] and bool(adjectives) and all(
        a in mood for a in adjectives)


def chat_quality(model, tok, rows: Sequence[tuple[str, str, str]]) -> dict:
    """Accuracy and well-formedness of greedy answers to held-out questions, per kind."""
    held = [(q, a) for q, a, split in rows if split == "heldout"]
    ex = encode_chats(tok, held)
    ok = teacher_forced_match(model, ex, tok.pad_token_id)
    answers = generate_answers(model, tok, [q for q, _ in held])
    by: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for (q, _), good, ans in zip(held, ok, answers):
        kind = chat_kind(q)
        if kind == "sentiment":  # any sentence about the noun in the asked mood is right
            good = sentiment_answer_ok(q, ans.replace(tok.eos_token, ""))
        formed = ans.endswith(" ." + tok.eos_token) and ans.count(tok.eos_token) == 1
        by[kind].append((good, formed))
        by["all"].append((good, formed))
    return {kind: {"accuracy": sum(g for g, _ in v) / len(v),
                   "well_formed": sum(f for _, f in v) / len(v), "n": len(v)}
            for kind, v in sorted(by.items())}
