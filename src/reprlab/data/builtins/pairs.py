"""``pairs-sentiment`` (contrast pairs) and ``prefs-tiny`` (preference triples)."""

from __future__ import annotations

from reprlab.data.builtins.pair_texts import PREFERENCE_TRIPLES, SENTIMENT_PAIRS
from reprlab.data.kinds import ContrastPairs, PreferenceTriples

SENTIMENT_PROVENANCE = (
    "Hand-written for reprlab: 60 pairs describing the same situation with positive and "
    "negative sentiment (positive = the first text); a default set for steering.")

PREFS_PROVENANCE = (
    "Hand-written for reprlab: 30 prompts with a helpful, correct answer (chosen) and an "
    "unhelpful or wrong one (rejected); a tiny set for tests and demos.")


def build_sentiment() -> ContrastPairs:
    pos = [p for p, _ in SENTIMENT_PAIRS]
    neg = [n for _, n in SENTIMENT_PAIRS]
    ids = [f"sent{k:03d}" for k in range(len(SENTIMENT_PAIRS))]
    return ContrastPairs(pos, neg, ids, name="pairs-sentiment", provenance=SENTIMENT_PROVENANCE)


def build_prefs() -> PreferenceTriples:
    prompt, chosen, rejected = (list(col) for col in zip(*PREFERENCE_TRIPLES, strict=True))
    ids = [f"pref{k:03d}" for k in range(len(PREFERENCE_TRIPLES))]
    return PreferenceTriples(prompt, chosen, rejected, ids, name="prefs-tiny",
                             provenance=PREFS_PROVENANCE)
