"""Instructions, preference triples and labeled sets built from the toy world.

* :func:`chat_examples` — (question, answer, split) for the SFT model: where a landmark is, a
  city's country, sums, comparisons, truth judgements, and happy / sad sentences. Held-out
  questions ask about entities whose *question* was never trained (their facts were).
* :func:`preference_shifts` — prompt / chosen / rejected triples with named distribution
  shifts for preference training ("prefer the true sum over a near miss", learned on operand
  pairs seen by neither pretraining nor SFT): ``train``, ``in-domain`` (other unseen pairs),
  ``harder`` (sums of three operands, a question shape never trained), ``cross-domain`` (the
  same principle on geography: the true city or country) and ``orthogonal`` (an unrelated
  preference: a happy over a sad sentence). Every rejected sum is one or two away from the
  right one.
"""

from __future__ import annotations

import random
from typing import Any

from reprlab.data.kinds import ContrastPairs, LabeledDataset, PreferenceTriples
from reprlab.toy.world import (
    HELDOUT_NOUNS,
    NEGATIVE,
    NOUNS,
    POSITIVE,
    PROVENANCE,
    World,
    _country_phrase,
    judge_prompt,
    mid,
)

SHIFTS = ("train", "in-domain", "harder", "cross-domain", "orthogonal")


def _yes(flag: bool) -> str:
    return "yes ." if flag else "no ."


def chat_examples(world: World) -> list[tuple[str, str, str]]:
    """(question, answer, split) with split "train" or "heldout"."""
    out: list[tuple[str, str, str]] = []
    lm_a, _ = world._halves(list(world.landmarks), "sft-landmarks")
    for lm, city in world.landmarks.items():
        out.append((f"Where is {mid(lm)} ?", f"{city} .", "train" if lm in lm_a else "heldout"))
    city_a, _ = world._halves(list(world.city_country), "sft-cities")
    for city, country in world.city_country.items():
        out.append((f"Which country is {city} in ?", f"{_country_phrase(country)} .",
                    "train" if city in city_a else "heldout"))
    for it in world.items:
        if it.task == "arithmetic" and it.split in ("train", "heldout_arith_heldout"):
            out.append((f"What is {it.meta['a']} + {it.meta['b']} ?", f"{it.answer} .",
                        "train" if it.split == "train" else "heldout"))
        elif it.task == "judge":
            statement = it.prompt[len("The city of "):-len(" . This is")]
            out.append((f"Is it true that the city of {statement} ?",
                        _yes(it.meta["statement_true"]),
                        "train" if it.split == "train" else "heldout"))
        elif it.task == "compare":
            out.append((f"Is {it.meta['a']} larger than {it.meta['b']} ?",
                        _yes(it.answer == "true"),
                        "train" if it.split == "train" else "heldout"))
    rng = world._rng("sft-sentiment")
    for noun in NOUNS:
        split = "heldout" if noun in HELDOUT_NOUNS else "train"
        for mood, positive in (("happy", True), ("sad", False)):
            for _ in range(1 if split == "heldout" else 6):
                sent = _pair_about(rng, noun)[0 if positive else 1]
                out.append((f"Write a {mood} sentence about the {noun} .", sent, split))
    return out


def all_chat_texts(world: World) -> list[tuple[str, str, str]]:
    """(question, answer, split) of every chat text: SFT examples and both completions of
    every preference triple (split = the shift's name)."""
    rows = chat_examples(world)
    for shift in SHIFTS:
        for prompt, chosen, rejected in _shift_rows(world, shift):
            rows += [(prompt, chosen, shift), (prompt, rejected, shift)]
    return rows


def vocabulary_texts(world: World) -> list[str]:
    """Every text the world can produce (the tokenizer's vocabulary comes from these), chat
    texts as the template renders them (after a role token, with a leading space)."""
    words = [" ".join(map(str, range(0, 2 * world.config.max_number + 2)))]
    words.append(" ".join(POSITIVE + NEGATIVE + NOUNS))
    return (world.pretrain_texts() + world.heldout_texts() + words
            + [f" {q} {a}" for q, a, _ in all_chat_texts(world)])


def _near_miss(rng: random.Random, right: int) -> int:
    """A wrong sum one or two away from ``right`` (never negative)."""
    return right + rng.choice([d for d in (-2, -1, 1, 2) if right + d >= 0])


def _shift_rows(world: World, shift: str) -> list[tuple[str, str, str]]:
    rng = world._rng(f"prefs:{shift}")
    if shift in ("train", "in-domain"):
        pairs = world.arith_pairs["prefs" if shift == "train" else "heldout"]
        return [(f"What is {a} + {b} ?", f"{a + b} .", f"{_near_miss(rng, a + b)} .")
                for a, b in pairs]
    if shift == "harder":  # three operands, a question shape never trained
        rows = []
        for a, b in world.arith_pairs["heldout"]:
            c = rng.randrange(10)
            right = a + b + c
            rows.append((f"What is {a} + {b} + {c} ?", f"{right} .",
                         f"{_near_miss(rng, right)} ."))
        return rows
    if shift == "cross-domain":
        rows = [(f"Where is {mid(lm)} ?", f"{city} .", f"{world.other_city(city, rng)} .")
                for lm, city in world.landmarks.items()]
        for city, country in sorted(world.city_country.items())[:80]:
            rows.append((f"Which country is {city} in ?", f"{_country_phrase(country)} .",
                         f"{_country_phrase(world.other_country(country, rng))} ."))
        return rows
    if shift == "orthogonal":
        rows = []
        for k in range(120):
            noun = NOUNS[k % len(NOUNS)]
            pos, neg = _pair_about(rng, noun)
            rows.append((f"Write a sentence about the {noun} .", pos, neg))
        return rows
    raise KeyError(shift)


def _pair_about(rng: random.Random, noun: str) -> tuple[str, str]:
    """A positive and a negative sentence about ``noun`` differing only in the adjectives."""
    other = rng.choice([n for n in NOUNS if n != noun])
    k1, k2 = rng.randrange(len(POSITIVE)), rng.randrange(len(POSITIVE))
    return (f"the {noun} was {POSITIVE[k1]} and the {other} was {POSITIVE[k2]} .",
            f"the {noun} was {NEGATIVE[k1]} and the {other} was {NEGATIVE[k2]} .")


def preference_shifts(world: World | None = None) -> dict[str, PreferenceTriples]:
    """Shift name -> preference triples (see the module docstring)."""
    world = world or default_world()
    out = {}
    for shift in SHIFTS:
        rows = _shift_rows(world, shift)
        out[shift] = PreferenceTriples(
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            ids=[f"{shift}-{k:04d}" for k in range(len(rows))],
            name="toy-prefs" if shift == "train" else f"toy-prefs-{shift}",
            provenance=PROVENANCE + f" Preference shift '{shift}' (see reprlab.toy.tasks).")
    return out


def truth_dataset(world: World | None = None) -> LabeledDataset:
    """"The city of X is in Y . This is" true/false for every city, balanced so that no word
    predicts the label: cities are paired across countries and swap them
    (:func:`~reprlab.data.builtins.balance.swap_pairs`), so every country is as often the
    object of a false statement as of a true one; group = the pair (four rows).

    Each text ends where the toy was pretrained to give its verdict (" true" / " false", the
    world's judgement items), so a probe reads the state that decides it, and each row's
    ``answers`` is that verdict: ``probe --answers`` sets what the toy says beside it."""
    from reprlab.data.builtins.balance import swap_pairs

    world = world or default_world()
    cities = list(world.city_country)
    truths = [world.city_country[c] for c in cities]
    texts, labels, groups, ids, answers = [], [], [], [], []
    for i, j in sorted(swap_pairs(truths, world._rng("truth-balanced"))):
        pair = f"{cities[i]} / {cities[j]}"
        for city, true, false in ((cities[i], truths[i], truths[j]),
                                  (cities[j], truths[j], truths[i])):
            for country, label in ((true, 1), (false, 0)):
                texts.append(judge_prompt(city, _country_phrase(country)))
                answers.append("true" if label else "false")
                labels.append(label)
                groups.append(pair)
                ids.append(f"{city}-{'true' if label else 'false'}")
    return LabeledDataset(texts, labels, ids, ["false", "true"], groups, name="toy-truth",
                          provenance=PROVENANCE + " Truth statements about every city: cities "
                          "paired across countries (seeded), each stated with its own country "
                          "and with its partner's, so each country is as often false as true; "
                          "each ends where the toy gives its verdict (the answer).",
                          answers=answers)


def sentiment_pairs(world: World | None = None) -> ContrastPairs:
    world = world or default_world()
    pairs = world.sentiment_pairs(200)
    return ContrastPairs([p for p, _ in pairs], [n for _, n in pairs], name="toy-pairs",
                         provenance=PROVENANCE + " Positive/negative sentiment sentences that "
                         "differ only in their adjectives.")


def judge_pairs(world: World | None = None, n: int = 200) -> ContrastPairs:
    """True/false number comparisons the toy was trained to judge ("72 is larger than 17 .
    This is" against "17 is larger than 72 . This is": the same words, swapped), ``n`` pairs
    from the training split. The state that decides " true" or " false" at the last token is
    a direction the toy uses (steering along it flips its judgement), unlike the sentiment of
    ``toy-pairs``, which the toy never learned to carry across a sentence."""
    world = world or default_world()
    true = [it for it in world.split("train") if it.task == "compare" and it.answer == "true"]
    rng = world._rng("judge-pairs")
    rows = rng.sample(true, min(n, len(true)))
    neg = [f"{it.meta['b']} is larger than {it.meta['a']} . This is" for it in rows]
    return ContrastPairs([it.prompt for it in rows], neg, name="toy-judge-pairs",
                         provenance=PROVENANCE + " True/false number comparisons from the "
                         "training split; each pair holds the same two numbers, swapped.")


def eval_text(world: World | None = None) -> LabeledDataset:
    """Held-out world text, one class ("text"), for drift and lenses."""
    world = world or default_world()
    texts = sorted(set(world.heldout_texts()))
    random.Random(0).shuffle(texts)
    texts = texts[:600]
    return LabeledDataset(texts, [0] * len(texts), None, ["text"], name="toy-text",
                          provenance=PROVENANCE + " Held-out sentences of the world.")


_DEFAULT: dict[str, Any] = {}


def default_world() -> World:
    if "world" not in _DEFAULT:
        _DEFAULT["world"] = World()
    return _DEFAULT["world"]
