"""False statements that no word gives away, in groups that keep it so.

A true/false set built as "one true and one false statement per subject" leaks its label
through the words when the false object is drawn uniformly: objects that are often true (the
country of many cities) then mostly appear in true rows. :func:`swap_pairs` instead pairs
the subjects so that the two objects differ, and each subject's false statement takes its
partner's object: subject A with X (true) and with Y (false), subject B with Y (true) and
with X (false). Every word then appears as often in false rows as in true ones, and does so
inside every pair too; with the pair as the group, any split or fold keeps that balance, so
a model of the words alone scores chance on held-out rows (balancing only over the whole set
would put it *below* chance: the training rows would lean the other way).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from reprlab.errors import DataError


def swap_pairs(objects: Sequence[str], rng: random.Random) -> list[tuple[int, int]]:
    """Indices of ``objects`` in pairs ``(i, j)`` with ``objects[i] != objects[j]``, drawn
    with ``rng``; every index once. Needs an even count with no value in more than half."""
    n = len(objects)
    by: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(objects):
        by[o].append(i)
    top = max((len(v) for v in by.values()), default=0)
    if n % 2 or 2 * top > n:
        raise DataError(f"cannot pair {n} entries into pairs of different values (one value "
                        f"fills {top}): give an even number with no value in more than half")
    values = sorted(by)
    rng.shuffle(values)
    order = []
    for v in values:
        members = by[v][:]
        rng.shuffle(members)
        order += members
    # entries of one value sit together, at most n/2 of them: k and k + n/2 always differ
    half = n // 2
    pairs = [(order[k], order[k + half]) for k in range(half)]
    rng.shuffle(pairs)
    return pairs
