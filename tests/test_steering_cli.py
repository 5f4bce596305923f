"""`reprlab steer` end to end on a tiny GPT-2 saved to disk, and its one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny, save_tiny

from reprlab.cli import main

PAIRS = [
    {"positive": "Question: do you like it? Answer: (A", "negative": "Question: do you like it? Answer: (B"},
    {"positive": "I feel wonderful and happy today", "negative": "I feel terrible and sad today"},
    {"positive": "Is this good? (A", "negative": "Is this good? (B"},
    {"positive": "What a lovely surprise", "negative": "What a horrible surprise"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_cli")
    save_tiny(root / "tiny")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return root


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    m, pairs = str(model_dir / "tiny"), str(model_dir / "pairs.jsonl")
    vec = tmp_path / "vec"
    assert main(["steer", "vector", "--model", m, "--pairs", pairs, "--method", "pca-diff",
                 "--sites", "layers.*", "--out", str(vec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "layers.2" in out and "pca-diff" in out
    assert (vec / "steering_vector.safetensors").exists()
    assert main(["steer", "generate", "--model", m, "--vector", str(vec), "--site", "layers.1",
                 "--coeffs", "-4,0,4", "--prompt", "I think that", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "gen.jsonl")]) == 0
    out = capsys.readouterr().out
    assert out.count("I think that") == 3 and "[-4]" in out
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [r["coeff"] for r in rows] == [-4.0, 0.0, 4.0]
    run = tmp_path / "val"
    assert main(["steer", "validate", "--model", m, "--vector", str(vec), "--site", "layers.1",
                 "--pairs", pairs, "--coeffs", "-8:8:3", "--out", str(run),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "answer_prob" in out and "kl_next" in out
    res = json.loads((run / "results.json").read_text())
    assert res["coeffs"] == [-8.0, 0.0, 8.0]
    for f in ("manifest.json", "report.html", "dose_response.csv",
              "dose_response_answers.png", "dose_response_side_effects.png"):
        assert (run / f).exists(), f
    gg = tmp_path / "control.gguf"
    assert main(["steer", "export", str(vec), "--gguf", str(gg)]) == 0
    assert main(["steer", "import", str(gg), "--out", str(tmp_path / "back")]) == 0
    assert main(["steer", "generate", "--model", m, "--vector", str(gg), "--site", "layers.2",
                 "--coeffs", "2", "--prompt", "Hi", "--max-new-tokens", "2"]) == 0


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    m, pairs = str(model_dir / "tiny"), str(model_dir / "pairs.jsonl")
    vec = tmp_path / "vec"
    assert main(["steer", "vector", "--model", m, "--pairs", pairs, "--sites", "layers.1",
                 "--out", str(vec), "--no-progress"]) == 0
    capsys.readouterr()

    def err(argv):
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    gen = ["steer", "generate", "--model", m, "--vector", str(vec), "--prompt", "Hi"]
    assert "not numbers" in err(gen + ["--coeffs", "-4,x,4"])
    assert "not numbers" in err(gen + ["--coeffs", "-8:8"])
    assert "no direction for site 'layers.2'" in err(gen + ["--site", "layers.2"])
    other = tmp_path / "wide"
    wide = make_tiny("gpt2", hidden=64)
    wide.model.save_pretrained(other)
    wide.tokenizer.save_pretrained(other)
    assert "hidden size" in err(["steer", "generate", "--model", str(other), "--vector", str(vec),
                                 "--prompt", "Hi"])
    same_shape = tmp_path / "other"
    o = make_tiny("gpt2", seed=9)
    o.model.save_pretrained(same_shape)
    o.tokenizer.save_pretrained(same_shape)
    assert "--allow-other-model" in err(["steer", "generate", "--model", str(same_shape),
                                         "--vector", str(vec), "--prompt", "Hi"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"positive": "fine", "negative": ""}) + "\n")
    assert "empty side" in err(["steer", "vector", "--model", m, "--pairs", str(bad),
                                "--out", str(tmp_path / "v2")])
    assert "unknown steering method" in err(["steer", "vector", "--model", m, "--pairs", pairs,
                                             "--method", "magic", "--out", str(tmp_path / "v3")])
    assert "holds no steering vector" in err(["steer", "export", str(tmp_path),
                                              "--gguf", str(tmp_path / "x.gguf")])
