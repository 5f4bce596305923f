"""``puns`` and ``puns-heldout``: is this sentence a pun?

``puns``: question-shaped jokes, each with a pun answer (label 1) and a plausible literal
answer to the same question (label 0); group = pair, so a question never appears in two
splits. ``puns-heldout``: statement-shaped puns and plain sentences of similar style, for
out-of-distribution evaluation of a probe trained on ``puns``.
"""

from __future__ import annotations

from reprlab.data.builtins.heldout_puns import PLAIN_SENTENCES, STATEMENT_PUNS
from reprlab.data.builtins.pun_pairs import PUN_PAIRS
from reprlab.data.kinds import LabeledDataset

PROVENANCE = (
    "Hand-written for reprlab: question-shaped jokes, each with a pun answer and a literal "
    "answer to the same question (text = question + ' ' + answer). Label 1 = pun, "
    "0 = literal; group = pair id.")

HELDOUT_PROVENANCE = (
    "Hand-written for reprlab: statement-shaped puns (label 1) and plain sentences of similar "
    "style and length (label 0), none question-shaped, for out-of-distribution evaluation of "
    "probes trained on 'puns'.")


def build() -> LabeledDataset:
    texts, labels, ids, groups = [], [], [], []
    for k, (question, pun, literal) in enumerate(PUN_PAIRS):
        pid = f"pun{k:03d}"
        texts += [f"{question} {pun}", f"{question} {literal}"]
        labels += [1, 0]
        ids += [f"{pid}-pun", f"{pid}-literal"]
        groups += [pid, pid]
    return LabeledDataset(texts, labels, ids, ["literal", "pun"], groups, name="puns",
                          provenance=PROVENANCE)


def build_heldout() -> LabeledDataset:
    texts = list(STATEMENT_PUNS) + list(PLAIN_SENTENCES)
    labels = [1] * len(STATEMENT_PUNS) + [0] * len(PLAIN_SENTENCES)
    ids = ([f"heldout-pun{k:03d}" for k in range(len(STATEMENT_PUNS))]
           + [f"heldout-plain{k:03d}" for k in range(len(PLAIN_SENTENCES))])
    return LabeledDataset(texts, labels, ids, ["literal", "pun"], None, name="puns-heldout",
                          provenance=HELDOUT_PROVENANCE)
