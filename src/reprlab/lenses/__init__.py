"""Lenses that read hidden states: the logit lens, the tuned lens and the talkative
(consistency) lens that puts an activation into a few words and back.

>>> from reprlab.lenses import LogitLens, TunedLens, load_lens
>>> lens = LogitLens.fit(lm)                      # lm: a LoadedModel of a causal LM
>>> per_layer_logits, final = lens.all_logits(lm, lm.encode(["The Eiffel Tower is in"]))
"""

from reprlab.lenses.base import LENS_KINDS, Lens, load_lens
from reprlab.lenses.logit import LogitLens
from reprlab.lenses.tuned import TunedLens

__all__ = ["LENS_KINDS", "Lens", "LogitLens", "TunedLens", "load_lens"]
