"""Patch and patch-sweep pages rendered in Chromium: prompts, metric tokens, model and sites
are visible, numbers are formatted the same on the page and in the console, and nothing reads
'None'."""

from __future__ import annotations

import json
import re

import pytest
from conftest import save_tiny
from report_dom import assert_shows

from reprlab.cli import main
from reprlab.report.fmt import cell, num, token_label

SRC, TGT = "The city of Paris is", "The city of Tokyo is"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny-gpt2-patch")))


def test_number_formats():
    assert num(-0.42383691668510437, 3) == "-0.424"
    assert num(6e-08, 3, scale=2.5) == "0" and num(6e-08, 3) == "6.00e-8"
    assert num(1234.5678, 4) == "1235" and num(0.003333, 3) == "0.00333"
    assert num(None) == "–" and num(float("nan")) == "–" and num(7) == "7"
    assert cell(123.4) == "123" and cell(0.052) == "0.052" and cell(6e-8, scale=3.0) == "0"
    assert cell(12345.0) == "12k" and cell(0.99) == "0.99"


def test_token_labels_drop_the_tokenizers_markers():
    assert token_label("ĠLondon") == "London" and token_label("▁Paris") == "Paris"
    assert token_label("ĠcafÃ©") == "café" and token_label("Ċ") == "'\\n'"
    assert token_label("<|end|>") == "<|end|>" and token_label("of") == "of"


def test_patch_page_shows_prompts_sites_and_model(saved_model, tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["patch", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--from", "layers.-1", "--to", "layers.1", "--pos", "-1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    top = res["patched_top"][0]
    man = json.loads((out / "manifest.json").read_text())
    assert "source model" not in man["inputs"] and "source_model" not in man["inputs"]
    text = assert_shows(out / "report.html", SRC, TGT, "layers.-1", "layers.1",
                        man["inputs"]["model"]["name"], top["token"], num(top["prob"], 3))
    assert "None" not in text and "Ġ" not in text and "Ġ" not in printed
    # the console prints the same formatted probabilities as the page
    assert num(top["prob"], 3) in printed and not re.search(r"\d\.\d{6,}", printed)


def test_sweep_page_shows_prompts_metric_tokens_and_formatted_numbers(saved_model, tmp_path,
                                                                      capsys):
    out = tmp_path / "s"
    rc = main(["patch", "sweep", "--model", saved_model, "--source", SRC, "--target", TGT,
               "--metric", "logit-diff", "--tokens", "paris,tokyo", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["source"] == SRC and res["target"] == TGT
    effects = [e for row in res["effect"] for e in row]
    best = max(effects, key=abs)
    text = assert_shows(out / "report.html", SRC, TGT, "'paris', 'tokyo'", "logit-diff",
                        f"Largest effect on logit-diff('paris', 'tokyo'): {num(best, 3)}",
                        "layers.0", num(res["target_clean"], 3))
    assert "None" not in text and "e-08" not in text and "e-07" not in text
    # position labels read as text ("3:of"), not as the tokenizer's "3:Ġof"
    assert res["tokens"] and not any("Ġ" in t for t in res["tokens"])
    assert "Ġ" not in text and f"{res['positions'][-1]}:{res['tokens'][-1]}" in text
    assert f"largest effect {num(best, 4)}" in printed
    assert not re.search(r"\d\.\d{7,}", printed)   # no unformatted floats on the console


def test_toy_pages_label_tokens_as_text(toy_mini, tmp_path, monkeypatch, capsys):
    """The toy's tokens carry GPT-2's space marker (``ĠLondon``); pages and console show text."""
    monkeypatch.setenv("REPRLAB_HOME", str(toy_mini.home))
    src, tgt = "Buckingham Palace is in the city of", "Eiffel Tower is in the city of"
    out = tmp_path / "p"
    assert main(["patch", "--model", "toy-mini", "--source", src, "--target", tgt,
                 "--from", "layers.-2", "--pos", "-1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert not any("Ġ" in r["token"] for r in res["patched_top"])
    text = assert_shows(out / "report.html", res["patched_top"][0]["token"])
    assert "Ġ" not in text and "Ġ" not in printed
    out = tmp_path / "s"
    assert main(["patch", "sweep", "--model", "toy-mini", "--source", src, "--target", tgt,
                 "--tokens", " London, Paris", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert "of" in res["tokens"] and not any("Ġ" in t for t in res["tokens"])
    text = assert_shows(out / "report.html", f"{res['positions'][-1]}:of")
    assert "Ġ" not in text and "Ġ" not in printed
