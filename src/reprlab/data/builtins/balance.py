"""False statements that no single word gives away.

A true/false set built as "one true and one false statement per subject" leaks its label
through the words when the false object is drawn uniformly: objects that are often true (the
country of many cities) then mostly appear in true rows. :func:`derange` instead gives each
subject a false object drawn from the multiset of true objects, so every object appears
exactly as often in false rows as in true ones (and every subject once in each).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from reprlab.errors import DataError


def derange(truths: Sequence[str], rng: random.Random) -> list[str]:
    """A permutation of ``truths`` with ``out[i] != truths[i]`` everywhere, drawn with ``rng``.

    Needs every value to be at most half of the entries (else no such permutation exists).
    """
    n = len(truths)
    top = max(Counter(truths).values(), default=0)
    if 2 * top > n:
        raise DataError(f"cannot derange {n} entries when one value fills {top} of them")
    out = list(truths)
    rng.shuffle(out)
    for _ in range(100 * n):
        bad = [i for i in range(n) if out[i] == truths[i]]
        if not bad:
            return out
        for i in bad:
            if out[i] != truths[i]:
                continue
            # swap with a partner that takes i's value and gives one i may hold
            cand = [j for j in range(n) if out[j] != truths[i] and out[i] != truths[j]]
            j = rng.choice(cand)
            out[i], out[j] = out[j], out[i]
    raise DataError("could not derange the values")  # pragma: no cover
