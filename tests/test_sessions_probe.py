"""A logistic probe trained inside one session equals the same probe trained locally."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from reprlab.errors import ReprlabError
from reprlab.hooks import StopForward, record
from reprlab.positions import pool
from reprlab.sessions.api import encode
from reprlab.sessions.remote_probe import batch_plan, fit_on_features, train_probe_in_session

WORDS = ["paris", "tokyo", "rome", "oslo", "lima", "cairo", "delhi"]


def _data(n_classes=2):
    texts = [f"the city of {w} is big {i}" for i, w in enumerate(WORDS * 2)]
    labels = [i % n_classes for i in range(len(texts))]
    return texts, labels


def _features(lm, texts, site, position, batch_size, seed):
    """Features computed batch by batch (same padding as the sessions) with plain hooks."""
    batches, _ = batch_plan(len(texts), batch_size, 1, seed)
    feats = torch.zeros(len(texts), lm.arch.hidden_size)
    for idx in batches:
        enc = encode(lm, [texts[i] for i in idx])
        with torch.no_grad(), record(lm, site, stop=True) as c:
            try:
                lm.model(**enc)
            except StopForward:
                pass
        feats[idx] = pool(c[site], enc["attention_mask"], position)
    return feats


@pytest.mark.parametrize("n_classes,optimizer", [(2, "adamw"), (3, "sgd")])
def test_probe_in_session_matches_local_reference(n_classes, optimizer):
    lm = make_tiny("gpt2")
    texts, labels = _data(n_classes)
    kw = dict(epochs=3, batch_size=4, lr=0.05, seed=7, optimizer=optimizer, progress=False)
    runs = {(b, m): train_probe_in_session(lm, texts, labels, "layers.1", "last",
                                           backend=b, mode=m, **kw)
            for b in ("local", "nnsight") for m in ("session", "steps")}
    w_ref, b_ref, loss_ref = fit_on_features(
        _features(lm, texts, "layers.1", "last", 4, 7), labels, 3, 4, 0.05, 7, optimizer)
    n_out = 1 if n_classes == 2 else n_classes
    for key, r in runs.items():
        assert r.weight.shape == (n_out, lm.arch.hidden_size), key
        assert torch.allclose(r.weight, w_ref, atol=1e-5), key
        assert torch.allclose(r.bias, b_ref, atol=1e-5), key
        assert torch.allclose(r.losses, loss_ref, atol=1e-5), key
    assert runs[("nnsight", "session")].n_sessions == 1
    assert runs[("nnsight", "steps")].n_sessions == 3 * 4
    assert w_ref.abs().sum() > 0                      # training moved the weights
    assert loss_ref[-1] < loss_ref[0]


def test_probe_batch_order_depends_on_seed_and_bad_input():
    assert batch_plan(10, 3, 2, 0) == batch_plan(10, 3, 2, 0)
    assert batch_plan(10, 3, 2, 0) != batch_plan(10, 3, 2, 1)
    lm = make_tiny("gpt2")
    texts, labels = _data()
    with pytest.raises(ReprlabError, match="one label per text"):
        train_probe_in_session(lm, texts, labels[:-1], "layers.0")
    with pytest.raises(ReprlabError, match="two classes"):
        train_probe_in_session(lm, texts, [0] * len(texts), "layers.0")
    with pytest.raises(ReprlabError, match="unknown site"):
        train_probe_in_session(lm, texts, labels, "layers.x")
