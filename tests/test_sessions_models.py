"""reprlab.session(...) on models already in memory: a Hugging Face nn.Module (with a
tokenizer argument, its own .tokenizer, or the one saved where it was loaded from) and an
nnsight LanguageModel give the same numbers as a LoadedModel."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny, save_lm

import reprlab
from reprlab.errors import ConfigError

PROMPTS = ["The Eiffel Tower is in the city of", "Buckingham Palace is in"]


def _read(model, backend="local", **kw):
    with reprlab.session(model, backend=backend, **kw) as s:
        with s.trace(PROMPTS) as t:
            t.save(t.read("layers.1", pos=-1), "h")
            t.save(t.logits[:, -1], "logits")
    return s.results


@pytest.fixture(scope="module")
def lm():
    return make_tiny("gpt2", layers=2)


def test_hf_module_with_a_tokenizer_equals_the_loaded_model(lm):
    ref = _read(lm)
    got = _read(lm.model, tokenizer=lm.tokenizer)
    assert torch.equal(ref["h"], got["h"]) and torch.equal(ref["logits"], got["logits"])
    # the same numbers through nnsight's interpreter
    nn = _read(lm.model, backend="nnsight", tokenizer=lm.tokenizer)
    assert torch.equal(ref["h"], nn["h"])


def test_hf_module_uses_its_own_tokenizer(lm, tmp_path):
    from transformers import AutoModelForCausalLM

    ref = _read(lm)
    lm.model.tokenizer = lm.tokenizer
    try:
        assert torch.equal(_read(lm.model)["h"], ref["h"])
    finally:
        del lm.model.tokenizer
    # loaded by the user from a directory that also holds its tokenizer
    path = save_lm(lm, tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(_read(model)["h"], _read(reprlab.load_model(str(path)))["h"])


def test_nnsight_language_model(lm):
    from nnsight import LanguageModel

    ref = _read(lm)
    envoy = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    for backend in ("local", "nnsight"):
        assert torch.equal(_read(envoy, backend=backend)["h"], ref["h"]), backend
    assert reprlab.sessions.session_model(envoy).extra["nnsight_remote"] is envoy


def test_refusals_name_the_fix(lm):
    with pytest.raises(ConfigError, match=r"no tokenizer .* tokenizer="):
        reprlab.session(lm.model)
    with pytest.raises(ConfigError, match="not a Hugging Face transformers model"):
        reprlab.session(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="LoadedModel .* Hugging Face model .* nnsight"):
        reprlab.session("not a model object")
