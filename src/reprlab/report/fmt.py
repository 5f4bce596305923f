"""Number formatting shared by report pages, figures and the console (no heavy imports).

Readers compare numbers down a column and across a page, so a number is written the same way
everywhere: no exponent between 0.001 and a million, a fixed count of significant digits, and
float noise (values far below the scale of what they are compared with) written as 0.
"""

from __future__ import annotations

import math
from typing import Any


def _is_float(v: Any) -> bool:
    return isinstance(v, float) or type(v).__name__ in ("float32", "float64", "float16")


def num(v: Any, digits: int = 4, scale: float | None = None, zero: float = 1e-6) -> str:
    """``v`` with ``digits`` significant digits and no exponent for 1e-3 <= |v| < 1e6.

    ``scale``: the magnitude ``v`` is compared with (e.g. the largest value of its table);
    values below ``zero × scale`` print as ``0``. None / NaN print as ``–``; ints and strings
    as they are.
    """
    if v is None:
        return "–"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if not _is_float(v):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    a = abs(v)
    if a == 0 or (scale is not None and a < zero * abs(scale)):
        return "0"
    if a < 1e-3 or a >= 1e6:
        return f"{v:.{max(1, digits - 1)}e}".replace("e-0", "e-").replace("e+0", "e+")
    decimals = max(0, digits - 1 - int(math.floor(math.log10(a))))
    return f"{v:.{decimals}f}"


def fixed(v: Any, decimals: int = 3, signed: bool = False) -> str:
    """``v`` with a fixed number of decimals (a column of accuracies), ``–`` when missing."""
    if v is None or (_is_float(v) and math.isnan(float(v))):
        return "–"
    return f"{float(v):{'+' if signed else ''}.{decimals}f}"


def cell(v: Any, scale: float | None = None) -> str:
    """Short text for a heatmap cell: three significant digits at most, no exponent for
    values that matter at the matrix's ``scale`` (its largest absolute value)."""
    if v is None or not math.isfinite(float(v)):
        return ""
    v = float(v)
    a = abs(v)
    if a == 0 or (scale is not None and a < 1e-4 * abs(scale)):
        return "0"
    if a >= 1e4:
        return f"{v / 1e3:.0f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 1e-3:
        return f"{v:.3f}".rstrip("0").rstrip(".") if a < 0.1 else f"{v:.2f}"
    return f"{v:.0e}"


__all__ = ["cell", "fixed", "num"]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes (``Ġ`` = space, ``Ċ`` = newline), inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_BYTES = _byte_decoder()


def token_label(token: Any) -> str:
    """A token as a reader should see it: byte-level (``ĠLondon``, ``Ċ``) and SentencePiece
    (``▁London``) markers turned back into text, outer whitespace dropped; a token that is only
    whitespace shows as its ``repr`` (``'\\n'``)."""
    t = str(token)
    if t and all(ch in _BYTES for ch in t) and any(ord(ch) > 255 for ch in t):
        t = bytes(_BYTES[ch] for ch in t).decode("utf-8", errors="replace")
    t = t.replace("▁", " ")
    return t.strip() or repr(t)
