"""The talkative lens: an activation put into a few tokens and rebuilt from them.

One concept a file: :mod:`.prompts` (decoder and encoder prompts), :mod:`.splice` (reading an
activation and splicing one back into the target), :mod:`.model` (the trainable
decoder/encoder pair), :mod:`.lens` (the frozen artifact), :mod:`.data` (the activation dump),
:mod:`.losses`, :mod:`.train` (the trainer) and :mod:`.evaluate` (metrics and baselines).
"""

from __future__ import annotations

from reprlab._lazy import install

_EXPORTS = {
    "TalkativeLens": "reprlab.lenses.talk.lens",
    "TalkModule": "reprlab.lenses.talk.model",
    "TalkConfig": "reprlab.lenses.talk.train",
    "train_talk": "reprlab.lenses.talk.train",
    "evaluate_talk": "reprlab.lenses.talk.evaluate",
    "LensData": "reprlab.lenses.talk.data",
    "dump": "reprlab.lenses.talk.data",
    "load_dump": "reprlab.lenses.talk.data",
}

__all__ = list(_EXPORTS)

install(__name__, _EXPORTS)
