"""Stated limits on counts a user types, so that a typo cannot ask for gigabytes.

Each entry is the largest count accepted and what it counts; :func:`cap` refuses more with one
line. The limits are far above any sweep that produces a readable report.
"""

from __future__ import annotations

from reprlab.errors import ConfigError

#: name -> (largest value accepted, what it counts)
LIMITS: dict[str, tuple[int, str]] = {
    "coeffs": (1_000, "coefficients"),
    "positions": (4_096, "positions"),
    "k": (1_000, "top predictions"),
    "max_new_tokens": (8_192, "new tokens"),
    "prompts": (100_000, "prompts"),
    "controls": (1_000, "control runs"),
    "bootstrap": (100_000, "bootstrap resamples"),
    "folds": (100, "folds"),
    "best_of": (64, "samples per explanation"),
}


def cap(name: str, value: int, flag: str) -> int:
    """``value`` when it is within the limit ``name``; :class:`ConfigError` otherwise."""
    limit, what = LIMITS[name]
    if value > limit:
        raise ConfigError(f"{flag}: {value:,} {what} is more than the limit of {limit:,}; "
                          "ask for fewer")
    return value


def range_count(spec: str) -> int | None:
    """The count of a ``start:stop:count`` spec (``None`` for a list), read before the values
    are made, so that a huge count is refused without building it."""
    text = str(spec).strip()
    if ":" not in text:
        return None
    parts = text.split(":")
    try:
        return int(parts[-1])
    except ValueError:
        return None
