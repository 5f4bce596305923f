"""Activation patching and batched causal-tracing sweeps."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny, save_tiny

from reprlab.cli import main
from reprlab.errors import ConfigError
from reprlab.hooks import edit, record
from reprlab.sessions.patching import expected_forwards, patch, sweep

SRC, TGT = "The city of Paris is", "The city of Tokyo is"
TOKENS = ["paris", "tokyo"]


def _naive(lm, src_lm=None):
    """One forward per cell with plain hooks: the reference for the batched sweep."""
    src_lm = src_lm or lm
    a, b = src_lm.encode([SRC]), lm.encode([TGT])
    ids = [lm.tokenizer.convert_tokens_to_ids(t) for t in TOKENS]
    with torch.no_grad(), record(src_lm, "layers.*") as cache:
        src_lm.model(**a)
    n_layers, n_tok = lm.arch.n_layers, b["input_ids"].shape[1]
    out = torch.zeros(n_layers, n_tok)
    for layer in range(n_layers):
        for p in range(n_tok):
            def fn(h, layer=layer, p=p):
                h = h.clone()
                h[:, p] = cache[f"layers.{layer}"][:, p]
                return h
            with torch.no_grad(), edit(lm, {f"layers.{layer}": fn}):
                lg = lm.model(**b).logits[0, -1]
            out[layer, p] = lg[ids[0]] - lg[ids[1]]
    return out


def test_batched_sweep_equals_one_forward_per_cell_on_both_backends():
    lm = make_tiny("gpt2")
    want = _naive(lm)
    res = {b: sweep(lm, SRC, TGT, metric="logit-diff", tokens=TOKENS, batch_size=8, backend=b)
           for b in ("local", "nnsight")}
    assert torch.equal(res["local"].values, res["nnsight"].values)
    assert torch.allclose(res["local"].values, want, atol=1e-5)
    r = res["local"]
    n_cells = want.numel()
    assert r.n_forwards == expected_forwards(3, want.shape[1], 8) < 2 + n_cells
    # the last position at the last layer carries the whole source: metric = source metric
    assert r.values[-1, -1] == pytest.approx(r.source_clean, abs=1e-5)
    assert r.recovery[-1, -1] == pytest.approx(1.0, abs=1e-4)
    # identical first tokens ("the city of"): patching them changes nothing
    assert torch.allclose(r.effect[:, 1], torch.zeros(3), atol=1e-6)


def test_sweep_across_models_and_probability_metric():
    base, tuned = make_tiny("gpt2", seed=0), make_tiny("gpt2", seed=3)
    r = sweep(base, SRC, TGT, sites="layers.0,layers.2", positions=[-1, -2], metric="prob",
              tokens=["paris"], source_model=tuned, batch_size=3)
    assert r.values.shape == (2, 2) and r.positions == [6, 5]
    assert ((r.values > 0) & (r.values < 1)).all()
    with pytest.raises(ConfigError, match="equal token length"):
        sweep(base, SRC, "A much longer target prompt than the source one", tokens=TOKENS)
    with pytest.raises(ConfigError, match="tokens for"):
        sweep(base, SRC, TGT, tokens=["Parisianistically", "x"])
    with pytest.raises(ConfigError, match="unknown metric"):
        sweep(base, SRC, TGT, metric="kl", tokens=TOKENS)


def test_patch_topk_before_after():
    lm = make_tiny("gpt2")
    same = patch(lm, TGT, TGT, "layers.1", k=4)
    assert [r["id"] for r in same["patched_top"]] == [r["id"] for r in same["target_top"]]
    res = patch(lm, SRC, TGT, "layers.-1", "layers.-1", pos=-1, k=4, backend="nnsight")
    # writing the source's last block output at the last position reproduces its prediction
    assert [r["id"] for r in res["patched_top"]] == [r["id"] for r in res["source_top"]]
    assert [r["prob"] for r in res["patched_top"]] == pytest.approx(
        [r["prob"] for r in res["source_top"]], abs=1e-6)
    probs = [r["prob"] for r in res["target_top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


@pytest.fixture
def saved_model(tmp_path):
    return str(save_tiny(tmp_path / "tiny-gpt2"))


def test_cli_patch_and_sweep(saved_model, tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["patch", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--from", "layers.-1", "--to", "layers.1", "--pos", "-1", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["from"] == "layers.-1" and len(res["patched_top"]) == 5
    assert (out / "report.html").exists() and (out / "manifest.json").exists()
    out2 = tmp_path / "s"
    rc = main(["patch", "sweep", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--metric", "logit-diff", "--tokens", "paris,tokyo", "--out", str(out2),
               "--backend", "nnsight", "--batch-size", "10"])
    assert rc == 0
    res = json.loads((out2 / "results.json").read_text())
    assert len(res["values"]) == 3 and res["n_forwards"] < res["naive_forwards"]
    for f in ("heatmap.png", "cells.csv", "report.html", "manifest.json"):
        assert (out2 / f).exists(), f
    assert "largest effect" in capsys.readouterr().out
    rc = main(["patch", "sweep", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--tokens", "paris", "--out", str(out2)])
    assert rc == 2   # logit-diff needs two tokens
    rc = main(["patch", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--from", "layers.9", "--out", str(out)])
    assert rc == 2
