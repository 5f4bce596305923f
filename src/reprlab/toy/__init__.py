"""A small causal LM that reprlab trains itself, on a generated world whose facts we know.

``reprlab toy build`` (or the first ``load_model("toy")``) trains it once and caches it;
``toy`` is the pretrained model, ``toy-sft`` the same model fine-tuned on the world's
instructions in a chat format. See :mod:`reprlab.toy.world` for what the world contains.
"""

from __future__ import annotations

from typing import Any

__all__ = ["World", "WorldConfig", "build", "ensure_built", "preference_shifts", "toy_home"]


def __getattr__(name: str) -> Any:
    if name in ("World", "WorldConfig"):
        from reprlab.toy import world

        return getattr(world, name)
    if name == "preference_shifts":
        from reprlab.toy.tasks import preference_shifts

        return preference_shifts
    if name in ("build", "ensure_built"):
        from reprlab.toy import variants

        return getattr(variants, name)
    if name == "toy_home":
        from reprlab.toy.build import toy_home

        return toy_home
    raise AttributeError(name)
