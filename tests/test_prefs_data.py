"""Preference data: file and chat shapes, a true-prefix tokenisation with stated truncation,
and the bad-input table (one clear line, exit 2, nothing left looking complete)."""

from __future__ import annotations

import json

import pytest
from conftest import save_lm
from prefs_helpers import chat_tiny

from reprlab.cli import main
from reprlab.prefs.data import load_preferences
from reprlab.prefs.tokenize import collate, encode_prompt, tokenize_prefs

ROWS = [{"prompt": f"what is {a} plus {a} ?", "chosen": f"{2 * a} .", "rejected": f"{2 * a + 1} ."}
        for a in range(6)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"chat": save_lm(chat_tiny(), root / "chat"),
            "plain": save_lm(chat_tiny(template=False), root / "plain")}


def test_chat_shapes_from_files_and_hf_json(tmp_path):
    uf = [{"prompt": r["prompt"],
           "chosen": [{"role": "user", "content": r["prompt"]},
                      {"role": "assistant", "content": r["chosen"]}],
           "rejected": [{"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["rejected"]}],
           "score_chosen": 8.0} for r in ROWS]
    path = _jsonl(tmp_path / "uf.jsonl", uf)
    ds = load_preferences(path)
    assert ds.prompt == [r["prompt"] for r in ROWS] and ds.chosen[2] == "4 ."
    no_prompt = [{k: v for k, v in r.items() if k != "prompt"} for r in uf]
    ds2 = load_preferences(_jsonl(tmp_path / "np.jsonl", no_prompt))
    assert ds2.prompt == ds.prompt and ds2.rejected == ds.rejected
    hf = load_preferences("hf:json", data_files=str(path))  # the datasets library path
    assert hf.chosen == ds.chosen and hf.prompt == ds.prompt
    genies = _jsonl(tmp_path / "g.jsonl", [{"prompt": r["prompt"], "chosen": r["chosen"],
                                             "rejected": r["rejected"]} for r in ROWS])
    assert load_preferences(genies, limit=3).chosen == [r["chosen"] for r in ROWS[:3]]


def test_prompt_is_a_true_prefix_and_masks(models):
    from reprlab.models import load_model

    lm = load_model(str(models["chat"]))
    tok = lm.tokenizer
    toks = tokenize_prefs(tok, load_preferences(ROWS), max_length=64)
    for i, row in enumerate(ROWS):
        assert toks.prompt_ids[i] == encode_prompt(tok, row["prompt"], raw_text=False)
        full = tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                        {"role": "assistant", "content": row["chosen"]}],
                                       tokenize=False)
        assert tok(full, add_special_tokens=False)["input_ids"] == \
            toks.prompt_ids[i] + toks.chosen_ids[i]
        assert toks.chosen_ids[i][-1] == tok.eos_token_id and toks.chosen_mask[i][-1] == 1
    batch = collate(toks, [0, 1])
    ids, comp, att = batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
    assert ids.shape[0] == 4 and (comp <= att).all()
    for j, i in enumerate([0, 1, 0, 1]):
        n_p = len(toks.prompt_ids[i])
        assert comp[j, :n_p].sum() == 0 and att[j].sum() > n_p


def test_truncation_is_counted_and_follows_the_policy(models):
    from reprlab.models import load_model

    tok = load_model(str(models["chat"])).tokenizer
    rows = [{"prompt": "one two three four five six seven eight nine ten", "chosen":
             "a b c d e f g h", "rejected": "a b c x e f g h"},
            {"prompt": "hi", "chosen": "yes .", "rejected": "no ."},
            {"prompt": " ".join(["word"] * 40), "chosen": "yes .", "rejected": "no ."}]
    full = tokenize_prefs(tok, load_preferences(rows), max_length=256)
    t = tokenize_prefs(tok, load_preferences(rows), max_length=20)
    r = t.report
    assert (r.rows, r.kept, r.dropped_prompt_too_long, r.completion_truncated) == (3, 2, 1, 1)
    assert t.prompt_ids[0] == full.prompt_ids[0]  # prompts are not cut without a limit
    assert t.chosen_ids[0] == full.chosen_ids[0][: 20 - len(full.prompt_ids[0])]  # from the right
    cut = tokenize_prefs(tok, load_preferences(rows), max_length=20, max_prompt_length=6)
    assert cut.report.prompt_truncated == 2 and cut.report.kept == 3
    assert cut.prompt_ids[2] == full.prompt_ids[2][-6:]  # from the left: the end is kept
    same = tokenize_prefs(tok, load_preferences(rows[:2]), max_length=18)
    assert same.report.dropped_identical == 1  # both cut to "a b c"
    assert "1 dropped (chosen = rejected" in same.report.summary()


def _train(model, data, out, *extra):
    return ["prefs", "train", "--model", str(model), "--data", str(data), "--out", str(out),
            "--steps", "1", "--batch-size", "2", "--max-length", "48", "--ref-cache", "off",
            "--lora-r", "2", "--lora-targets", "q_proj", "--no-progress", *extra]


def _case_missing_column(tmp, m):
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", [{"prompt": "a", "chosen": "b"}]),
                  tmp / "o"), "no column 'rejected'"


def _case_empty_completion(tmp, m):
    rows = [dict(ROWS[0]), {**ROWS[1], "chosen": "  "}]
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", rows), tmp / "o"), "empty text"


def _case_same_completions(tmp, m):
    rows = [dict(ROWS[0]), {**ROWS[1], "rejected": ROWS[1]["chosen"]}]
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", rows), tmp / "o"), \
        "same chosen and rejected"


def _case_prompt_over_budget(tmp, m):
    rows = [{**r, "prompt": " ".join(["long"] * 60)} for r in ROWS]
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", rows), tmp / "o"), \
        "every prompt of 'd' is at least --max-length 48"


def _case_no_chat_template(tmp, m):
    return _train(m["plain"], _jsonl(tmp / "d.jsonl", ROWS), tmp / "o"), "no chat template"


def _case_lora_target_matches_nothing(tmp, m):
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", ROWS), tmp / "o", "--lora-targets",
                  "qkv_fused"), "match no module"


def _case_eval_other_base_model(tmp, m):
    assert main(_train(m["chat"], _jsonl(tmp / "d.jsonl", ROWS), tmp / "run")) == 0
    other = save_lm(chat_tiny(seed=5), tmp / "other")
    return ["prefs", "eval", str(tmp / "run"), "--model", str(other), "--out", str(tmp / "o"),
            "--no-progress"], "was trained on"


def _case_resume_with_other_settings(tmp, m):
    data = _jsonl(tmp / "d.jsonl", ROWS)
    assert main(_train(m["chat"], data, tmp / "o")) == 0
    return _train(m["chat"], data, tmp / "o", "--beta", "0.3"), "different settings (beta 0.1 -> 0.3"


def _case_unknown_method(tmp, m):
    return _train(m["chat"], _jsonl(tmp / "d.jsonl", ROWS), tmp / "o", "--method", "dpo2"), \
        "unknown --method 'dpo2'"


CASES = {f.__name__[6:]: f for f in (
    _case_missing_column, _case_empty_completion, _case_same_completions,
    _case_prompt_over_budget, _case_no_chat_template, _case_lora_target_matches_nothing,
    _case_eval_other_base_model, _case_resume_with_other_settings, _case_unknown_method)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, models, tmp_path, capsys):
    argv, expected = CASES[case](tmp_path, models)
    before = (tmp_path / "o" / "results.json").read_text() \
        if (tmp_path / "o" / "results.json").exists() else None
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    out = tmp_path / "o"
    if before is None:  # nothing half-written looks complete
        assert not (out / "manifest.json").exists()
    else:  # the earlier finished run is untouched
        assert (out / "results.json").read_text() == before


def test_contrast_pairs_read_as_preferences():
    ds = load_preferences("builtin:pairs-sentiment", limit=5)
    assert len(ds) == 5 and ds.prompt == [""] * 5 and ds.chosen[0] != ds.rejected[0]


def test_python_api_names_stay_callable():
    import reprlab.prefs as prefs
    import reprlab.prefs.comparison  # noqa: F401
    import reprlab.prefs.evaluation  # noqa: F401
    import reprlab.prefs.trainer  # noqa: F401

    assert all(callable(f) for f in (prefs.train, prefs.evaluate, prefs.compare))
