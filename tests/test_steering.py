"""Steering maths, operators, exact restore, parity with repeng/steering-vectors conventions, GGUF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEXTS, make_tiny

from reprlab.errors import ConfigError, DataError, ModelError, SiteError
from reprlab.hooks import hook_count, record
from reprlab.steering import (
    SteeringFitter,
    SteeringVector,
    apply_operator,
    export_gguf,
    import_gguf,
    parse_coeffs,
    steer,
)
from reprlab.steering.directions import estimate
from reprlab.steering.operators import Scope

POS = ["I love this film, it is wonderful", "What a great and happy day",
       "The food was delicious and fresh", "She smiled, thrilled with the gift",
       "This is the best news ever", "We had a lovely time at the beach"]
NEG = ["I hate this film, it is awful", "What a terrible and sad day",
       "The food was disgusting and stale", "She frowned, upset with the gift",
       "This is the worst news ever", "We had a miserable time at the beach"]


@pytest.fixture(scope="module")
def gpt2():
    return make_tiny("gpt2")


def _logits(lm, batch):
    with torch.no_grad():
        return lm.model(**batch).logits.clone()


# -- coefficients, scopes ---------------------------------------------------------------------
def test_parse_coeffs():
    assert parse_coeffs("-4,0,4") == [-4.0, 0.0, 4.0]
    assert parse_coeffs("-8:8:9") == [-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    assert parse_coeffs(2) == [2.0]
    for bad in ("a,b", "1:2", "-8:8:x", "", "nan", "1:2:0"):
        with pytest.raises(ConfigError, match="not numbers"):
            parse_coeffs(bad)


def test_scope_parse():
    assert Scope.parse("all") == Scope("all")
    assert Scope.parse("from:3") == Scope("from", 3)
    assert Scope.parse("generated").kind == "generated"
    with pytest.raises(ConfigError):
        Scope.parse("from:-1")


# -- pure operators ---------------------------------------------------------------------------
def test_operators_pure():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    u = torch.randn(16, generator=g, dtype=torch.float64)
    u = u / u.norm()
    back = apply_operator(apply_operator(h, u, 3.5, "add"), u, -3.5, "add")
    torch.testing.assert_close(back, h, atol=1e-12, rtol=0)
    abl = apply_operator(h, u, 0.0, "ablate")
    assert (abl @ u).abs().max() < 1e-12
    torch.testing.assert_close(abl + (h @ u).unsqueeze(-1) * u, h)
    st = apply_operator(h, u, 2.0, "set")
    torch.testing.assert_close(st @ u, torch.full((3, 5), 2.0, dtype=torch.float64))
    pn = apply_operator(h, u, 4.0, "add", preserve_norm=True)
    torch.testing.assert_close(pn.norm(dim=-1), h.norm(dim=-1))
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, 2:] = True
    part = apply_operator(h, u, 1.0, "add", mask=mask)
    assert torch.equal(part[:, :2], h[:, :2])
    torch.testing.assert_close(part[:, 2:], h[:, 2:] + u)


# -- exact restore ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_exact_restore_and_on_exception(arch):
    lm = make_tiny(arch)
    batch = lm.encode(TEXTS)
    out_key = "logits" if lm.is_causal else "last_hidden_state"
    with torch.no_grad():
        before = getattr(lm.model(**batch), out_key).clone()
    hooks = hook_count(lm.model)
    vec = {"layers.0": torch.randn(32), "layers.1": torch.randn(32)}
    with steer(lm, vec, 5.0, preserve_norm=True), torch.no_grad():
        during = getattr(lm.model(**batch), out_key)
    assert not torch.allclose(during, before)
    with torch.no_grad():
        assert torch.equal(getattr(lm.model(**batch), out_key), before)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, vec, -3.0, op="set", scope="from:1"):
            with torch.no_grad():
                lm.model(**batch)
            raise RuntimeError("boom")
    assert hook_count(lm.model) == hooks
    with torch.no_grad():
        assert torch.equal(getattr(lm.model(**batch), out_key), before)


def test_add_then_subtract_restores_activations(gpt2):
    batch = gpt2.encode(TEXTS)
    u = torch.randn(32)
    with record(gpt2, ["layers.1", "layers.2"]) as base, torch.no_grad():
        gpt2.model(**batch)
    base = {k: v.clone() for k, v in base.items()}
    with steer(gpt2, {"layers.1": u}, 6.0), steer(gpt2, {"layers.1": u}, -6.0):
        with record(gpt2, ["layers.1", "layers.2"]) as got, torch.no_grad():
            gpt2.model(**batch)
    for k in base:
        torch.testing.assert_close(got[k], base[k], atol=1e-5, rtol=1e-5)


def test_ablation_leaves_no_component(gpt2):
    batch = gpt2.encode(TEXTS)
    u = torch.randn(32)
    u = u / u.norm()
    with steer(gpt2, {"layers.1": u}, op="ablate"):
        with record(gpt2, ["layers.1"]) as got, torch.no_grad():
            gpt2.model(**batch)
    assert (got["layers.1"] @ u).abs().max() < 1e-5
    with steer(gpt2, {"layers.1": u}, 1.5, op="set"):
        with record(gpt2, ["layers.1"]) as got, torch.no_grad():
            gpt2.model(**batch)
    torch.testing.assert_close(got["layers.1"] @ u, torch.full(got["layers.1"].shape[:2], 1.5),
                               atol=1e-5, rtol=0)


def test_scope_from_index_under_left_padding(gpt2):
    batch = gpt2.encode(TEXTS, padding_side="left")
    u = torch.randn(32)
    u = u / u.norm()
    with record(gpt2, ["layers.1"]) as base, torch.no_grad():
        gpt2.model(**batch)
    base = base["layers.1"].clone()
    with steer(gpt2, {"layers.1": u}, 2.0, scope="from:2"):
        with record(gpt2, ["layers.1"]) as got, torch.no_grad():
            gpt2.model(**batch)
    mask = batch["attention_mask"]
    rank = mask.cumsum(1) - 1
    edited = (rank >= 2) & (mask == 1)
    delta = (got["layers.1"] - base) @ u
    torch.testing.assert_close(delta[edited], torch.full((int(edited.sum()),), 2.0), atol=1e-5,
                               rtol=0)
    assert delta[~edited].abs().max() == 0


def test_generated_scope_leaves_prompt_alone(gpt2):
    from reprlab.steering import generate

    batch = gpt2.encode(TEXTS[:2])
    before = _logits(gpt2, batch)
    # the direction of one token's (tied) embedding: steering along it makes that token likely
    target = 7
    vec = SteeringVector({"layers.1": gpt2.model.get_input_embeddings().weight[target].detach()},
                         {"layers.1": 1.0})
    with steer(gpt2, vec, 50.0, scope="generated"):
        assert torch.equal(_logits(gpt2, batch), before)  # a plain forward is all prompt
    rows = generate(gpt2, vec, ["I think that", "Hello"], [0.0, 50.0], max_new_tokens=6,
                    scope="generated", ignore_eos=True)
    assert len(rows) == 4 and all(len(r["token_ids"]) == 6 for r in rows)
    # the first new token comes from the prompt forward: unsteered; later ones are steered
    for off, on in zip(rows[:2], rows[2:], strict=True):
        assert off["token_ids"][0] == on["token_ids"][0]
        assert off["token_ids"][1:] != on["token_ids"][1:]
        assert on["token_ids"][1:].count(target) > off["token_ids"][1:].count(target)
    again = generate(gpt2, vec, ["I think that", "Hello"], [0.0, 50.0], max_new_tokens=6,
                     scope="generated", sample=True, seed=3)
    assert again == generate(gpt2, vec, ["I think that", "Hello"], [0.0, 50.0],
                             max_new_tokens=6, scope="generated", sample=True, seed=3)


# -- direction estimators against direct computation ------------------------------------------
def _direct_last_token(lm, texts):
    """Block outputs at the last non-padding token via output_hidden_states (independent path)."""
    enc = lm.encode(texts)
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    last = enc["attention_mask"].sum(1) - 1
    rows = torch.arange(len(texts))
    return {f"layers.{i}": hs[i + 1][rows, last].double() for i in range(lm.arch.n_layers - 1)}


def _repeng_sign(direction, pos, neg):
    pp, pn = pos @ direction, neg @ direction
    return -direction if (pp < pn).float().mean() > (pp > pn).float().mean() else direction


def test_directions_match_direct_computation_and_repeng_sign(gpt2):
    from sklearn.decomposition import PCA

    pos_acts, neg_acts = _direct_last_token(gpt2, POS), _direct_last_token(gpt2, NEG)
    sites = list(pos_acts)
    for method in ("mean-diff", "pca-diff", "pca-center"):
        vec = SteeringFitter(gpt2, sites, method, batch_size=4, progress=False).fit_pairs(POS, NEG)
        for s in sites:
            p, n = pos_acts[s], neg_acts[s]
            diff = (p - n).numpy()
            if method == "mean-diff":
                ref = torch.from_numpy(diff.mean(0))
            elif method == "pca-diff":
                ref = torch.from_numpy(PCA(n_components=1).fit(diff).components_[0])
            else:  # repeng pca_center: interleaved pair-centred rows
                center = (p + n) / 2
                train = torch.stack([p - center, n - center], 1).reshape(-1, p.shape[1]).numpy()
                ref = torch.from_numpy(PCA(n_components=1).fit(train).components_[0])
            ref = _repeng_sign(ref / ref.norm(), p, n) if method != "mean-diff" else ref / ref.norm()
            got = vec.direction(s).double()
            cos = float(got @ ref)
            assert cos > 0.9999, (method, s, cos)  # same direction AND same sign
            assert vec.scales[s] == pytest.approx(float((p - n).mean(0).norm()), rel=1e-4)
            # positives project above negatives in more pairs than not (repeng's convention)
            assert float(((p - n) @ got > 0).double().mean()) >= 0.5


def test_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, generator=g)
    base = torch.randn(40, 8, generator=g)
    pos = base + 0.3 * w + 0.5 * torch.randn(40, 8, generator=g)
    neg = base - 0.3 * w + 0.5 * torch.randn(40, 8, generator=g)
    u, scale = estimate("logistic", pos, neg)
    mid = (pos + neg) / 2
    x = torch.cat([pos - mid, neg - mid]).numpy()
    y = np.r_[np.ones(40), -np.ones(40)]
    ref = LogisticRegression(fit_intercept=False, C=1.0, max_iter=10_000, tol=1e-10).fit(x, y)
    ref_u = torch.from_numpy(ref.coef_[0]).double()
    assert float(u.double() @ (ref_u / ref_u.norm())) > 0.9999
    assert scale == pytest.approx(float((pos - neg).mean(0).norm()), rel=1e-5)


def test_parity_with_steering_vectors(gpt2):
    import copy

    sv = pytest.importorskip("steering_vectors")
    tok = copy.deepcopy(gpt2.tokenizer)
    tok.model_input_names = ["input_ids", "attention_mask"]  # GPT-2 would embed token types
    ref = sv.train_steering_vector(gpt2.model, tok, list(zip(POS, NEG, strict=True)),
                                   layers=[0, 1, 2], batch_size=3)
    ours = SteeringFitter(gpt2, "layers.*", "mean-diff", batch_size=5,
                          progress=False).fit_pairs(POS, NEG)
    for layer, v in ref.layer_activations.items():
        raw = ours.raw(f"layers.{layer}").double()
        cos = float(raw @ v.double() / (raw.norm() * v.double().norm()))
        assert cos > 0.9999
        torch.testing.assert_close(raw, v.double(), rtol=1e-3, atol=1e-6)


def test_fitter_rejects_bad_pairs(gpt2):
    fitter = SteeringFitter(gpt2, "layers.1", progress=False)
    with pytest.raises(DataError, match="empty"):
        fitter.fit_pairs(["good", "  "], ["bad", "worse"])
    with pytest.raises(DataError, match="empty side"):
        fitter.fit_pairs([], [])
    with pytest.raises(ConfigError, match="unknown steering method"):
        SteeringFitter(gpt2, "layers.1", method="magic")


# -- the artifact ----------------------------------------------------------------------------
def test_vector_save_load_and_checks(gpt2, tmp_path):
    vec = SteeringFitter(gpt2, "layers.*", "pca-diff", progress=False).fit_pairs(POS, NEG)
    vec.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v")
    assert back.sites == vec.sites and back.method == "pca-diff"
    for s in vec.sites:
        assert torch.equal(back.direction(s), vec.direction(s).float())
        assert back.scales[s] == pytest.approx(vec.scales[s], rel=1e-6)
    h = torch.randn(2, 3, 32)
    torch.testing.assert_close(back(h, "layers.1"), h @ back.direction("layers.1"))
    back.check_model(gpt2)
    with pytest.raises(SiteError, match="no direction for site 'layers.7'"):
        back.direction("layers.7")
    other = make_tiny("gpt2", hidden=64)
    with pytest.raises(ModelError, match="hidden size 32 but model"):
        back.check_model(other)
    with pytest.raises(ModelError, match="hidden size"):
        with steer(other, back, 1.0):
            pass
    different = make_tiny("gpt2", seed=5)
    with pytest.raises(ModelError, match="fitted on"):
        back.check_model(different)
    back.check_model(different, strict=False)
    assert back.to(dtype=torch.float64).direction("layers.0").dtype == torch.float64


# -- GGUF -----------------------------------------------------------------------------------
def test_gguf_round_trip(gpt2, tmp_path):
    gguf = pytest.importorskip("gguf")
    vec = SteeringFitter(gpt2, "layers.*", "mean-diff", progress=False).fit_pairs(POS, NEG)
    path = export_gguf(vec, tmp_path / "control.gguf", coeff=-1.7)
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "gpt2"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    names = {t.name: t for t in reader.tensors}
    assert sorted(names) == ["direction.1", "direction.2"]  # block 0 cannot be steered by llama.cpp
    t = names["direction.2"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1
    np.testing.assert_allclose(np.asarray(t.data), -1.7 * vec.direction("layers.2").numpy(),
                               rtol=1e-6, atol=1e-7)
    back = import_gguf(path)
    assert back.sites == ["layers.1", "layers.2"]
    for s in back.sites:
        torch.testing.assert_close(back.direction(s), vec.direction(s), atol=1e-6, rtol=0)
        assert back.scales[s] == pytest.approx(vec.scales[s])
    assert back.method == "mean-diff"
    back.check_model(gpt2)


def test_gguf_import_foreign_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "r.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 2)
    a = np.arange(1, 9, dtype=np.float32)
    w.add_tensor("direction.3", a)
    w.add_tensor("direction.5", -a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    vec = import_gguf(tmp_path / "r.gguf")
    assert vec.sites == ["layers.3", "layers.5"]
    torch.testing.assert_close(vec.raw("layers.5"), -torch.from_numpy(a))
    assert vec.model["model_type"] == "llama"
    only_zero = SteeringVector({"layers.0": torch.ones(8)}, {"layers.0": 1.0})
    with pytest.raises(ConfigError, match="llama.cpp"):
        export_gguf(only_zero, tmp_path / "z.gguf")
