"""The bag-of-words baseline beside every probe table, "best" chosen on validation, and
probes at the embeddings on the relational built-ins."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reprlab.probes import sweep
from reprlab.probes.memory import TensorStore
from reprlab.probes.splits import split_rows
from reprlab.probes.surface import bag_of_words, surface_baseline, vocabulary, words

GOOD = ["good", "great", "fine", "lovely", "nice"]
BAD = ["bad", "awful", "poor", "nasty", "grim"]
NOUNS = ["day", "meal", "film", "trip", "book", "song", "game", "view"]


def _texts(n: int, seed: int, noise: float = 0.2) -> tuple[list[str], list[int]]:
    """Sentences whose label is given by one adjective, flipped on a share ``noise``."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        word = rng.choice(GOOD if y else BAD)
        texts.append(f"What a {word} {rng.choice(NOUNS)} it was, number {rng.randrange(40)}.")
        labels.append(y if rng.random() > noise else 1 - y)
    return texts, labels


def test_words_and_features():
    assert words("Fifty-one is larger than Paris's 3rd_street.") == [
        "fifty", "one", "is", "larger", "than", "paris", "s", "3rd", "street"]
    vocab = vocabulary(["a b b", "b c", "c b"])
    assert vocab == ["b", "c", "a"]  # by how many texts hold the word, then alphabetical
    X = bag_of_words(["b b a", "d"], vocab)
    assert X.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_surface_baseline_matches_sklearn():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = _texts(300, 0, noise=0.1)
    y = torch.tensor(labels)
    parts = split_rows(y, (0.6, 0.2, 0.2), None, 0)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    for l2 in (1e-2, 1e-1):
        ours = surface_baseline(texts, y, [(tr, va, te)], n_classes=2, l2_grid=[l2],
                                bootstrap=0, tol=1e-8, max_iter=2000)
        # the same features (vocabulary of the training and validation rows)
        vec = CountVectorizer(binary=True, token_pattern=r"[^\W_]+")
        vec.fit([texts[i] for i in torch.cat([tr, va]).tolist()])
        assert ours["features"] == len(vec.vocabulary_)
        Xs = vec.transform(texts)
        ref = LogisticRegression(C=1.0 / (l2 * len(tr)), tol=1e-10, max_iter=5000)
        ref.fit(Xs[tr.numpy()], y[tr].numpy())
        p_ref = ref.predict_proba(Xs[te.numpy()])[:, 1]
        np.testing.assert_allclose(ours["probs"][:, 1].numpy(), p_ref, atol=2e-4)
        assert ours["test_acc"] == pytest.approx(ref.score(Xs[te.numpy()], y[te].numpy()))
    # the planted word is found: 10% of the labels are flipped, so about 0.9 is the ceiling
    best = surface_baseline(texts, y, [(tr, va, te)], n_classes=2, bootstrap=200)
    assert 0.75 <= best["test_acc"] <= 0.97 and best["test_acc_lo"] < best["test_acc"]
    assert best["l2"][0] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def test_sweep_shows_the_surface_baseline_and_chooses_on_validation():
    texts, labels = _texts(400, 1)
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor(labels)
    # eight sites of noise: their validation and test accuracies rank them differently
    tensors = {(f"layers.{i}", "mean"): torch.randn(400, 6, generator=gen) for i in range(8)}
    store = TensorStore(tensors, labels=y, texts=texts)
    res = sweep(store, probes="logistic", bootstrap=0, controls=False, progress=False)
    words_acc = res.surface["test_acc"]
    assert 0.7 <= words_acc <= 0.95  # the adjective gives the label away (20% flipped)
    for r in res.rows:
        assert r["surface_acc"] == words_acc
        assert r["beyond_surface"] == pytest.approx(r["test_acc"] - max(words_acc,
                                                                        r["majority_acc"]))
    by_val = max(res.rows, key=lambda r: (r["val_acc"], -r["val_log_loss"]))
    by_test = max(res.rows, key=lambda r: r["test_acc"])
    assert res.best["site"] == by_val["site"] and res.best["val_acc"] == by_val["val_acc"]
    assert by_test["site"] != by_val["site"]  # the choice is not the test set's
    assert res.to_dict()["surface"]["test_acc"] == words_acc
    assert "probs" not in res.to_dict()["surface"]
    # no texts, no baseline
    bare = sweep(TensorStore(tensors, labels=y), probes="logistic", bootstrap=0,
                 controls=False, progress=False)
    assert bare.surface is None and bare.rows[0]["surface_acc"] is None


def test_cross_validated_baseline_pools_out_of_fold():
    texts, labels = _texts(80, 2, noise=0.0)
    y = torch.tensor(labels)
    store = TensorStore({("layers.0", "mean"): torch.randn(80, 4)}, labels=y, texts=texts)
    res = sweep(store, probes="mass-mean", bootstrap=0, controls=False, progress=False)
    assert res.config["mode"] == "cv"
    assert res.surface["n_test"] == 80 and len(res.surface["l2"]) == 5
    assert res.surface["test_acc"] >= 0.95  # one word gives every label


def test_embed_probe_near_chance_on_relational_minilm_sets(tmp_path):
    # mean-pooled embeddings see which words a text holds (and, through position embeddings,
    # where): on the relational built-ins that must not be enough
    from reprlab.probes import probe

    for name in ("cities", "larger_than"):
        res = probe(model="minilm", data=f"builtin:{name}", sites="embed", positions="mean",
                    out=tmp_path / name, report=False, progress=False, bootstrap=0,
                    controls=False)
        for r in res.rows:
            assert abs(r["test_acc"] - 0.5) <= 0.1, (name, r["family"], r["test_acc"])
        assert res.surface["test_acc"] <= 0.6


def test_embed_probe_near_chance_on_toy_truth(toy_mini, tmp_path, monkeypatch):
    from reprlab.probes import probe

    monkeypatch.setenv("REPRLAB_HOME", str(toy_mini.home))
    res = probe(model="toy-mini", data="builtin:toy-truth", sites="embed", positions="mean",
                probes="logistic", out=tmp_path / "run", report=False, progress=False,
                bootstrap=0, controls=False)
    assert abs(res.rows[0]["test_acc"] - 0.5) <= 0.1
    assert res.surface["test_acc"] <= 0.6
