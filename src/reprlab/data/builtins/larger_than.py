"""``larger_than``: "X is larger than Y." / "X is smaller than Y." with numbers in words.

Follows the design of the ``larger_than`` set of Marks & Tegmark (2023), *The Geometry of
Truth*: two different numbers between fifty-one and ninety-nine, stated in both orders, one
true and one false. Half of the pairs (seeded) are stated with "smaller than" instead, as in
the paper's ``smaller_than`` set. Without them the label would be readable from which number
comes first: a linear model of the words *and their positions* (the mean of a model's input
embeddings, which add a position to each token) scores a large first number as true. With
both comparisons in equal measure, no word, at any position, predicts the label; only the
relation between the two numbers and the comparison word does.
"""

from __future__ import annotations

import itertools
import random

from reprlab.data.kinds import LabeledDataset
from reprlab.errors import DataError

PROVENANCE = (
    "Generated: pairs of different numbers from 51 to 99 written in English words, following "
    "the design of the 'larger_than' and 'smaller_than' sets in Marks & Tegmark 2023, The "
    "Geometry of Truth; 500 pairs drawn with a seeded RNG, each giving one true and one false "
    "statement, half of the pairs with 'larger than' and half with 'smaller than' (so that "
    "neither the words nor the first number predicts the label). Group = pair.")

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def _below_thousand(n: int) -> str:
    parts = []
    if n >= 100:
        parts.append(f"{_ONES[n // 100]} hundred")
        n %= 100
        if n:
            parts.append("and")
    if n >= 20:
        parts.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not parts:
        parts.append(_ONES[n])
    return " ".join(parts)


def number_to_words(n: int) -> str:
    """English words for an integer, British style: 51 -> "fifty-one",
    342 -> "three hundred and forty-two", -7 -> "minus seven"."""
    n = int(n)
    if abs(n) >= 10**12:
        raise DataError(f"number_to_words supports |n| < 10**12, got {n}")
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 1000:
        return _below_thousand(n)
    parts = []
    for scale, word in _SCALES:
        if n >= scale:
            parts.append(f"{_below_thousand(n // scale)} {word}")
            n %= scale
    if n:
        parts.append(("and " if n < 100 else "") + _below_thousand(n))
    return " ".join(parts)


def sentence(a: int, b: int, relation: str = "larger") -> str:
    text = f"{number_to_words(a)} is {relation} than {number_to_words(b)}."
    return text[0].upper() + text[1:]


def build(n_pairs: int = 500, low: int = 51, high: int = 99, seed: int = 0) -> LabeledDataset:
    """``2 * n_pairs`` rows, balanced; classes ["false", "true"]; group = pair. The first
    half of the pairs drawn say "larger than", the second half "smaller than"."""
    pairs = list(itertools.combinations(range(low, high + 1), 2))
    rng = random.Random(seed)
    chosen = rng.sample(pairs, n_pairs)
    texts, labels, ids, groups = [], [], [], []
    for k, (small, big) in enumerate(chosen):
        relation = "larger" if k < n_pairs - n_pairs // 2 else "smaller"
        first_true = rng.random() < 0.5  # which row of the pair comes first
        true_row = (big, small) if relation == "larger" else (small, big)
        rows = [(sentence(*true_row, relation), 1), (sentence(*true_row[::-1], relation), 0)]
        for text, label in rows if first_true else rows[::-1]:
            texts.append(text)
            labels.append(label)
            ids.append(f"{big}-{small}-{relation}-{'true' if label else 'false'}")
            groups.append(f"{big}-{small}")
    return LabeledDataset(texts, labels, ids, ["false", "true"], groups, name="larger_than",
                          provenance=PROVENANCE)
