"""What the toy world knows, to check explanations against: the fact behind a toy prompt, and
the landmark prompts in phrasings held out of the lens's training texts ("X stands in", "X is
in the country of"), with the city and the country they should bring to mind. The lens never
sees these answers as explanations; they only grade it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

#: phrasings of the landmark check; training texts that use them are left out of training
LANDMARK_PHRASINGS = (" stands in", " is in the country of")


@lru_cache(maxsize=1)
def _facts() -> dict[str, dict[str, Any]]:
    from reprlab.toy.tasks import default_world
    from reprlab.toy.world import _country_phrase

    world = default_world()
    out: dict[str, dict[str, Any]] = {}
    for it in world.items:
        out[it.prompt] = {"task": it.task, "answer": it.answer, "split": it.split}
    for lm, city in world.landmarks.items():
        country = _country_phrase(world.city_country[city])
        for phrasing in ("is in the city of", "stands in", "is in the country of"):
            out[f"{lm} {phrasing}"].update({"landmark": lm, "city": city, "country": country})
    return out


def world_fact(text: str) -> dict[str, Any] | None:
    """The toy world's fact whose prompt is ``text`` (``None`` for any other text)."""
    try:
        return _facts().get(text.strip())
    except Exception:  # noqa: BLE001 - a world that cannot load means no facts to show
        return None


def landmark_checks() -> list[dict[str, Any]]:
    """Every landmark prompt in the held-out phrasings, with its city and country."""
    return [{"text": p, **f} for p, f in _facts().items()
            if "landmark" in f and p.endswith(tuple(s.strip() for s in LANDMARK_PHRASINGS))
            and not p.endswith("is in the city of")]


def uses_landmark_phrasing(text: str) -> bool:
    """Whether a training text contains a landmark check's phrasing (such texts are left out
    of the lens's training so that the check is on phrasings it never saw)."""
    return any(p in text for p in LANDMARK_PHRASINGS) and any(
        text.startswith(lm) for lm in _landmarks())


@lru_cache(maxsize=1)
def _landmarks() -> tuple[str, ...]:
    from reprlab.toy.world import LANDMARKS

    return tuple(lm for lm, _ in LANDMARKS)


def names_fact(explanation_ids: list[int], fact: dict[str, Any], tokenizer: Any) -> bool:
    """Whether an explanation (token ids) holds the first token of the fact's city or of its
    country (without a leading article)."""
    targets = set()
    for key in ("city", "country"):
        phrase = str(fact.get(key, "")).strip()
        words = [w for w in phrase.split() if w.lower() != "the"]
        if words:
            ids = tokenizer(" " + words[0], add_special_tokens=False)["input_ids"]
            if ids:
                targets.add(int(ids[0]))
    return bool(targets & {int(i) for i in explanation_ids})
