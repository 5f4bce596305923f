"""`reprlab lens ...` end to end on a tiny model on disk, and the bad-input table."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny

from reprlab.cli import main

TEXTS = [f"The {a} {b} is in the city of {c} ." for a in ("old", "tall", "red", "big")
         for b in ("tower", "bridge", "gate") for c in ("Paris", "Rome")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens-cli")
    model = save_tiny(root / "llama", "llama", hidden=32, layers=2)
    other = save_tiny(root / "llama-b", "llama", hidden=32, layers=2, seed=7)
    wide = save_tiny(root / "wide", "llama", hidden=48, layers=2)
    bert = save_tiny(root / "bert", "bert", hidden=32, layers=2)
    data = root / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    return {"model": str(model), "other": str(other), "wide": str(wide), "bert": str(bert),
            "data": str(data), "root": root}


def test_logit_and_tuned_cli(tiny, tmp_path, capsys):
    assert main(["lens", "logit", "--model", tiny["model"], "--text", TEXTS[0],
                 "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "logit lens" in out and "layers.1" in out and "embed" in out
    run = tmp_path / "tuned"
    rc = main(["lens", "tuned", "train", "--model", tiny["model"], "--data", tiny["data"],
               "--out", str(run), "--steps", "4", "--tokens-per-step", "60",
               "--optimizer", "adam", "--lr", "3e-3", "--eval-frac", "0.25", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model cross-entropy" in printed
    for name in ("results.json", "manifest.json", "report.html", "eval.csv", "lenses.png",
                 "lens.safetensors", "lens.json"):
        assert (run / name).exists(), name
    res = json.loads((run / "results.json").read_text())
    assert len(res["layers"]) == 3 and len(res["history"]) == 4
    assert main(["lens", "tuned", "eval", str(run)]) == 0
    again = capsys.readouterr().out
    assert again.splitlines() == printed.splitlines()[:-1]  # same numbers, minus 'report:'
    assert main(["lens", "tuned", "eval", str(run), "--data", tiny["data"], "--out",
                 str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "lenses.png").exists() and (tmp_path / "ev" / "manifest.json").exists()
    assert main(["lens", "logit", "--model", tiny["model"], "--text", TEXTS[0],
                 "--tuned", str(run)]) == 0
    assert "tuned lens" in capsys.readouterr().out


def test_talk_cli_train_explain_and_resume(tiny, tmp_path, capsys, monkeypatch):
    run = tmp_path / "talk"
    args = ["lens", "talk", "train", "--model", tiny["model"], "--data", tiny["data"],
            "--site", "layers.1", "--tokens", "3", "--out", str(run), "--steps", "4",
            "--batch-size", "6", "--eval-rows", "4", "--best-of", "2", "--checkpoint-every",
            "1", "--no-progress"]
    monkeypatch.setenv("REPRLAB_STOP_AFTER", "2")
    assert main(args) == 130
    assert not (run / "manifest.json").exists() and (run / "train_state.safetensors").exists()
    monkeypatch.delenv("REPRLAB_STOP_AFTER")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "context_echo" in out and "lookup" in out and "mentions Paris or France" in out
    res = json.loads((run / "results.json").read_text())
    assert [h["step"] for h in res["history"]] == [1, 2, 3, 4]
    m = res["metrics"]
    for k in ("fve", "nrmse", "kl_bits", "fve_shuffled", "fve_context_echo", "fve_other_row",
              "fve_lookup", "fve_empty", "fve_resample", "fve_pca", "fve_best_of_2",
              "share_of_lookup_residual"):
        assert isinstance(m[k], float), k
    names = [r["name"] for r in m["baselines"]]
    assert names == ["lens", "best_of_2", "lookup", "context_echo", "empty", "other_row",
                     "shuffled", "resample", "pca", "mean"]
    assert all(r["kl_bits"] >= 0 for r in m["baselines"])
    assert m["fve_mean"] == pytest.approx(0.0, abs=1e-9)
    assert m["share_of_lookup_residual"] == pytest.approx(
        (m["fve"] - m["fve_lookup"]) / (1 - m["fve_lookup"]))
    assert res["data"]["cache_hit"] is True  # the second run reused the dump
    for name in ("report.html", "training.png", "examples.csv", "baselines.csv",
                 "lens.safetensors"):
        assert (run / name).exists(), name
    # evaluated again: the same lens, split and seed give the same figures, eval.json beside
    assert main(["lens", "talk", "eval", str(run), "--best-of", "2"]) == 0
    assert "lens minus (paired, 95%): lookup" in capsys.readouterr().out
    again = json.loads((run / "eval.json").read_text())["metrics"]
    for k in ("fve", "fve_lookup", "fve_context_echo", "fve_shuffled", "fve_best_of_2"):
        assert again[k] == pytest.approx(m[k], abs=1e-6), k
    assert main(["lens", "talk", "eval", str(run), "--echo-epochs", "0.5", "--best-of",
                 "2"]) == 0
    short = json.loads((run / "eval.json").read_text())
    assert short["echo_epochs"] == 0.5 and short["metrics"]["fve"] == pytest.approx(m["fve"])
    assert short["metrics"]["fve_context_echo"] != pytest.approx(m["fve_context_echo"])
    assert main(["lens", "talk", "explain", str(run), "--text", TEXTS[0], "--best-of", "2"]) == 0
    out = capsys.readouterr().out
    assert "words:" in out and "logit lens:" in out and "best of 2" in out
    page = tmp_path / "explain.html"
    assert main(["lens", "talk", "explain", str(run), "--text", TEXTS[0], "--json",
                 "--page", str(page)]) == 0
    rows = json.loads(capsys.readouterr().out)
    ids = save_tiny_tokenizer_ids(tiny, TEXTS[0])
    assert [r["position"] for r in rows] == ids  # every non-special token, in order
    for r in rows:
        assert {"position", "token", "explanation", "fve", "logit_lens"} <= set(r)
        assert len(r["explanation"].split()) <= 3 and isinstance(r["fve"], float)
    assert page.read_text().count("<tr>") == len(rows) + 1 and "<script" not in page.read_text()


def save_tiny_tokenizer_ids(tiny, text):
    """The non-special token positions of ``text`` under the tiny model's tokenizer."""
    from reprlab.lenses.talk.data import special_ids
    from reprlab.models import load_model

    lm = load_model(tiny["model"])
    ids = lm.encode([text])["input_ids"][0].tolist()
    special = special_ids(lm.tokenizer)
    return [p for p, i in enumerate(ids) if i not in special]


def _bad(tiny, tmp_path):
    t, d = tiny["model"], tiny["data"]
    store = tmp_path / "shared-store"
    base = ["lens", "talk", "train", "--data", d, "--steps", "1", "--no-progress"]
    return [
        (base + ["--model", t, "--tokens", "0", "--out", str(tmp_path / "a")],
         "--tokens must be at least 1"),
        (base + ["--model", t, "--tau", "linear:1.0:-0.2", "--out", str(tmp_path / "b")],
         "goes below 0"),
        (base + ["--model", t, "--site", "layers.1", "--decoder", tiny["wide"],
                 "--out", str(tmp_path / "c")], "width 32 but the decoder LM's is 48"),
        (base + ["--model", tiny["other"], "--site", "layers.1", "--store", str(store),
                 "--out", str(tmp_path / "d")], "captured from"),
        (base + ["--model", t, "--site", "layers.7", "--out", str(tmp_path / "e")],
         "out of range"),
        (base + ["--model", t, "--w-kl", "0", "--w-mse", "0", "--w-lm", "0", "--out",
                 str(tmp_path / "f")],
         "all 0"),
        (["lens", "tuned", "train", "--model", t, "--data", d, "--optimizer", "lion",
          "--out", str(tmp_path / "g")], "unknown optimizer"),
        (["lens", "logit", "--model", tiny["bert"], "--text", "hi"], "unembedding"),
        (["lens", "talk", "explain", str(tmp_path / "nope"), "--text", "hi"],
         "not a finished reprlab run"),
        (["lens", "tuned", "eval", str(tmp_path / "nope")], "not a finished reprlab run"),
        (base + ["--model", t, "--recipe", "nla", "--out", str(tmp_path / "h")],
         "--recipe nla needs warm-start explanations"),
        (base + ["--model", t, "--site", "layers.1", "--store", str(store), "--recipe", "nla",
                 "--explanations", str(tmp_path / "two.txt"), "--out", str(tmp_path / "i")],
         "holds 2 explanations but the activations have"),
    ]


def test_bad_inputs_one_line_exit_2(tiny, tmp_path, capsys):
    # a dump made with one model, then offered to another
    assert main(["lens", "talk", "train", "--model", tiny["model"], "--data", tiny["data"],
                 "--site", "layers.1", "--store", str(tmp_path / "shared-store"),
                 "--steps", "1", "--eval-rows", "2", "--best-of", "1", "--out",
                 str(tmp_path / "ok"), "--no-progress"]) == 0
    capsys.readouterr()
    (tmp_path / "two.txt").write_text("Paris France\nRome Italy\n")
    for argv, needle in _bad(tiny, tmp_path):
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, argv
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (argv, err)
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if out:
            assert not (tmp_path / out / "manifest.json").exists()


def test_python_api_runs(tiny, tmp_path):
    from reprlab.lenses import TunedLens, load_lens, talk_explain, talk_lens_run, tuned_lens_run

    res = tuned_lens_run(tiny["model"], TEXTS, tmp_path / "tuned", steps=2, tokens_per_step=50,
                         progress=False)
    assert len(res["layers"]) == 3 and isinstance(load_lens(tmp_path / "tuned" / "lens"),
                                                  TunedLens)
    res = talk_lens_run(tiny["model"], TEXTS, tmp_path / "talk", site="layers.0", tokens=2,
                        steps=2, eval_rows=2, best_of=1, progress=False)
    assert len(res["history"]) == 2 and res["probe"]["text"].startswith("The Eiffel Tower")
    rows = talk_explain(tmp_path / "talk", ["The old gate is in"], tuned=tmp_path / "tuned",
                        position=-1)
    assert len(rows[0]["words"]) == 2 and "tuned_lens" in rows[0]
