"""Lenses that read hidden states: the logit lens, the tuned lens and the talkative
(consistency) lens that puts an activation into a few words and back.

Every lens is a frozen artifact (``save`` / :func:`load_lens`, safetensors + JSON, ``.to``):

>>> from reprlab.lenses import LogitLens, TunedLens, load_lens
>>> lens = LogitLens.fit(lm)                      # lm: a LoadedModel of a causal LM
>>> per_layer_logits, final = lens.all_logits(lm, lm.encode(["The Eiffel Tower is in"]))
>>> tuned = TunedLens.fit(lm, texts, TunedTrainConfig(steps=100))

Workflows that write run directories (what the CLI calls) live in :mod:`reprlab.lenses.run`:
``tuned_lens_run``, ``tuned_lens_eval``, ``talk_lens_run``, ``talk_eval``, ``talk_explain``.
"""

from __future__ import annotations

from reprlab._lazy import install

_EXPORTS = {
    "LENS_KINDS": "reprlab.lenses.base",
    "Lens": "reprlab.lenses.base",
    "load_lens": "reprlab.lenses.base",
    "LogitLens": "reprlab.lenses.logit",
    "TunedLens": "reprlab.lenses.tuned.lens",
    "TalkativeLens": "reprlab.lenses.talk.lens",
    "TalkConfig": "reprlab.lenses.talk.train",
    "train_talk": "reprlab.lenses.talk.train",
    "TunedTrainConfig": "reprlab.lenses.tuned.train",
    "train_tuned": "reprlab.lenses.tuned.fit",
    "evaluate_lenses": "reprlab.lenses.tuned.evaluate",
    "evaluate_talk": "reprlab.lenses.talk.evaluate",
    "dump": "reprlab.lenses.talk.data",
    "tuned_lens_run": "reprlab.lenses.run",
    "tuned_lens_eval": "reprlab.lenses.run",
    "talk_lens_run": "reprlab.lenses.run",
    "talk_eval": "reprlab.lenses.run",
    "talk_explain": "reprlab.lenses.run",
}

__all__ = list(_EXPORTS)

install(__name__, _EXPORTS)
