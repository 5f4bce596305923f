"""``larger_than``: "X is larger than Y." with both numbers written in words.

Follows the design of the ``larger_than`` set of Marks & Tegmark (2023), *The Geometry of
Truth*: two different numbers between fifty-one and ninety-nine; the true statement puts the
larger first, the false one the smaller first.
"""

from __future__ import annotations

import itertools
import random

from reprlab.data.kinds import LabeledDataset
from reprlab.errors import DataError

PROVENANCE = (
    "Generated: pairs of different numbers from 51 to 99 written in English words, following "
    "the design of the 'larger_than' set in Marks & Tegmark 2023, The Geometry of Truth; "
    "500 pairs drawn with a seeded RNG, each giving one true and one false statement. "
    "Group = pair.")

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


def sentence(a: int, b: int) -> str:
    text = f"{number_to_words(a)} is larger than {number_to_words(b)}."
    return text[0].upper() + text[1:]


def build(n_pairs: int = 500, low: int = 51, high: int = 99, seed: int = 0) -> LabeledDataset:
    """``2 * n_pairs`` rows, balanced; classes ["false", "true"]; group = pair."""
    pairs = list(itertools.combinations(range(low, high + 1), 2))
    rng = random.Random(seed)
    chosen = rng.sample(pairs, n_pairs)
    texts, labels, ids, groups = [], [], [], []
    for small, big in chosen:
        first_true = rng.random() < 0.5  # which row of the pair comes first
        rows = [(sentence(big, small), 1), (sentence(small, big), 0)]
        for text, label in rows if first_true else rows[::-1]:
            texts.append(text)
            labels.append(label)
            ids.append(f"{big}-{small}-{'true' if label else 'false'}")
            groups.append(f"{big}-{small}")
    return LabeledDataset(texts, labels, ids, ["false", "true"], groups, name="larger_than",
                          provenance=PROVENANCE)
