"""The paired bootstrap of `prefs compare`: seeds, rows, planted and null differences."""

from __future__ import annotations

import numpy as np
import pytest

from reprlab.errors import ConfigError
from reprlab.prefs.comparison import BASE, NO_WINNER, verdict
from reprlab.prefs.stats import PairedBootstrap


def test_identical_seeds_give_the_interval_of_one_seed():
    x = (np.random.default_rng(0).random(150) < 0.6).astype(float)
    boot = PairedBootstrap(150, 1000, seed=3)
    one = boot.interval(x, key=1)
    three = boot.interval(np.stack([x, x, x]), key=1)
    assert (three.lo, three.mean, three.hi) == pytest.approx((one.lo, one.mean, one.hi),
                                                             abs=1e-12)
    assert one.hi - one.lo > 0.05  # an interval, not a point


def test_pairing_cancels_shared_row_difficulty():
    """Two methods whose rows agree except on 10 of 200: the paired difference is tight while
    each method's own interval is wide."""
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:10]] = 1.0
    boot = PairedBootstrap(200, 2000)
    d = boot.difference(b, 1, a, 0)
    assert d.mean == pytest.approx(0.05)
    assert d.hi - d.lo < 0.07 < boot.interval(a, 0).hi - boot.interval(a, 0).lo
    assert d.p < 0.01


def _draw(rng, p, seeds, shift):
    return (rng.random((seeds, len(p))) < np.clip(p + shift, 0, 1)).astype(float)


def test_planted_difference_is_detected_and_a_null_one_is_not():
    """Over repeated data sets (200 rows of varying difficulty, 3 seeds): a null difference is
    called significant at most about 5% of the time at level 0.95, a +0.15 gain almost always."""
    rng = np.random.default_rng(7)
    false_pos = hits = 0
    reps = 80
    for r in range(reps):
        p = rng.uniform(0.1, 0.9, 200)
        base = _draw(rng, p, 3, 0.0)
        boot = PairedBootstrap(200, 500, seed=r)
        false_pos += boot.difference(_draw(rng, p, 3, 0.0), 1, base, 0).significant(0.95)
        hits += boot.difference(_draw(rng, p, 3, 0.15), 2, base, 0).significant(0.95)
    assert false_pos / reps <= 0.08
    assert hits / reps >= 0.9


def test_rows_of_another_length_are_refused():
    with pytest.raises(ConfigError, match="same evaluation rows"):
        PairedBootstrap(10, 10).interval(np.ones((2, 12)), 0)


def _rows(means: dict[str, float], incoherent=()):
    return [{"label": k, "incoherent_seeds": int(k in incoherent), "s": {"mean": v}}
            for k, v in means.items()]


def _d(a, b, mean, p):
    return {"a": a, "b": b, "mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "p": p}


def test_verdict_names_a_best_method_only_with_evidence():
    rows = _rows({"dpo": 0.7, "ipo": 0.6, BASE: 0.5})
    sig = [_d("dpo", BASE, 0.2, 0.001), _d("ipo", BASE, 0.1, 0.01), _d("ipo", "dpo", -0.1, 0.02)]
    assert verdict("s", rows, sig, 0.95)[0] == "dpo"
    # not separated from the runner-up: nobody named
    tied = sig[:2] + [_d("ipo", "dpo", -0.1, 0.2)]
    won, line = verdict("s", rows, tied, 0.95)
    assert won is None and "runner-up ipo" in line
    # nobody above base
    null = [_d("dpo", BASE, 0.2, 0.3), _d("ipo", BASE, 0.1, 0.5), _d("ipo", "dpo", -0.1, 0.02)]
    won, line = verdict("s", rows, null, 0.95)
    assert won is None and line.startswith(NO_WINNER)
    # the leader is incoherent: never named (the only coherent one, above base, is)
    won, line = verdict("s", _rows({"dpo": 0.7, "ipo": 0.6, BASE: 0.5}, ("dpo",)), sig, 0.95)
    assert won == "ipo" and line.endswith("[among coherent methods; left out: dpo]")
    assert "among coherent" not in verdict("s", rows, sig, 0.95)[1]
