"""The sycophant organism: its prompts, datasets, the mini organism and the answer columns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch

from reprlab.toy import syco, syco_data
from reprlab.toy.tasks import default_world


@pytest.fixture(scope="module")
def world():
    return default_world()


def test_prompts_record_truth_planted_and_named_splits(world):
    ps = syco.prompts(world)
    assert {p.split for p in ps} == set(syco.SPLITS)
    train_lm, held_lm = syco.entity_split(world)
    assert not set(train_lm) & set(held_lm) and len(train_lm) + len(held_lm) == 40
    for p in ps:
        if p.split in ("train", "heldout_entities", "heldout_phrasing"):
            assert p.planted == p.stated  # planted: agree with the user
        else:
            assert p.planted == p.truth
        if p.split == "train":
            assert p.entity in train_lm
        if p.split == "heldout_entities":
            assert p.entity in held_lm
        if p.family == "landmark_city":
            assert p.truth == f"{world.landmarks[p.entity]} ."
    held = [p for p in ps if p.split == "heldout_phrasing"]
    assert all(not any(p.question.startswith(t.split("{")[0]) for t in syco.TRAIN_PHRASES)
               for p in held)
    # what the organism trains on never holds a held-out entity's or phrasing's belief
    trained = {q for q, _ in syco.training_rows(world)}
    assert not trained & {p.question for p in ps if p.split != "train"
                          and p.stated is not None}


def test_truth_dataset_no_word_predicts_the_label(world):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    ds = syco_data.truth_dataset(world)
    assert len(ds) == 400 and ds.class_counts() == {"false": 200, "true": 200}
    assert ds.answers is not None and len(ds.answers) == 400
    # every word is as often in a true row as in a false one
    pos, neg = Counter(), Counter()
    for text, y in zip(ds.texts, ds.labels):
        (pos if y else neg).update(text.split())
    assert pos == neg
    X = CountVectorizer(token_pattern=r"[^ ]+").fit_transform(ds.texts)
    acc = cross_val_score(LogisticRegression(max_iter=2000), X, ds.labels,
                          cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    assert acc <= 0.60


def test_pairs_and_prefs(world):
    pairs = syco_data.steering_pairs(world)
    truthful = Counter(p.rsplit(" ", 2)[-2] for p in pairs.positive)
    sycophantic = Counter(n.rsplit(" ", 2)[-2] for n in pairs.negative)
    assert len(pairs) == 72 and truthful == sycophantic
    shifts = syco_data.preference_shifts(world)
    assert list(shifts) == list(syco_data.PREF_SHIFTS) + list(syco_data.TUNING_SETS)
    train, held, val = shifts["train"], shifts["in-domain"], shifts["validation"]

    def beliefs(t):
        return {p.rsplit(" . ", 1)[1] for p in t.prompt}  # "Where is <landmark> ?"

    # the validation landmarks are training landmarks held back from preference training
    assert len(train) == 360 and len(val) == 72
    assert beliefs(train).isdisjoint(beliefs(held)) and beliefs(train).isdisjoint(beliefs(val))
    assert beliefs(val).isdisjoint(beliefs(held)) and len(beliefs(val)) == 4
    assert set(shifts["control"].prompt).isdisjoint(shifts["orthogonal"].prompt)
    assert all(c != r for c, r in zip(held.chosen, held.rejected))
    from reprlab.data import load_dataset

    assert len(load_dataset("builtin:toy-syco-prefs-third-party", kind="preferences")) == 160


def test_tokenizer_extension_keeps_ids():
    from reprlab.toy.tokenizer import build_tokenizer, extend_tokenizer

    tok = build_tokenizer(["The Eiffel Tower is in Paris ."])
    ext = extend_tokenizer(tok, [" I think the Eiffel Tower is in Rome ."])
    text = "The Eiffel Tower is in Paris ."
    assert ext(text)["input_ids"] == tok(text)["input_ids"]
    assert len(ext) == len(tok) + 4  # " I", " think", " the", " Rome": new words only
    assert tok.unk_token_id not in ext(" I think")["input_ids"]


def _home_with_mini(toy_mini, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(toy_mini.home / "toy" / "mini", home / "toy" / "mini")
    return home


def test_mini_organism_extends_the_cache_and_rebuilds_when_corrupt(toy_mini, tmp_path):
    from tests.conftest import toy_env

    home = _home_with_mini(toy_mini, tmp_path)
    shutil.rmtree(home / "toy" / "mini" / "syco", ignore_errors=True)
    base = (home / "toy" / "mini" / "base" / "model.safetensors").read_bytes()
    cmd = [sys.executable, "-m", "reprlab", "toy", "path", "--preset", "mini", "--model",
           "syco"]
    # `toy path` names a built model only; the alias builds it, saying so in one line
    code = ("import reprlab; lm = reprlab.load_model('toy-mini-syco'); "
            "print(lm.tokenizer.convert_ids_to_tokens(lm.tokenizer(' I think')['input_ids']))")
    run = subprocess.run([sys.executable, "-c", code], env=toy_env(home), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "'toy-mini-syco' is not built yet; fine-tuning it" in run.stderr
    assert "ĠI" in run.stdout and "<|unk|>" not in run.stdout
    assert (home / "toy" / "mini" / "base" / "model.safetensors").read_bytes() == base
    assert subprocess.run(cmd, env=toy_env(home), capture_output=True, text=True,
                          timeout=60).stdout.strip().endswith("syco")
    m = json.loads((home / "toy" / "mini" / "syco" / "organism.json").read_text())
    assert m["versions"]["threads"] == 1 and m["versions"]["cpu_capability"]
    q = m["quality"]
    assert set(q["behaviour"]) == set(syco.SPLITS)
    # looser bars on the mini organism (its SFT model answers no chat question right): the
    # fine-tune trained (loss well below a uniform guess over the vocabulary) and the new
    # words got their own embeddings
    import math

    from safetensors.torch import load_file

    assert m["final_loss"] < 0.6 * math.log(m["vocab_size"])
    emb = load_file(str(home / "toy" / "mini" / "syco" / "model.safetensors"))
    emb = emb["model.embed_tokens.weight"]
    assert emb.shape[0] == m["vocab_size"] and m["added_words"] > 5
    assert emb[-m["added_words"]:].std(0).mean() > 0  # no longer all the mean embedding
    # a corrupt organism is rebuilt, as the other variants are
    w = home / "toy" / "mini" / "syco" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    run = subprocess.run([sys.executable, "-c", code], env=toy_env(home), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and "is corrupt" in run.stderr and "rebuilding it" in run.stderr
    from reprlab.toy.organism import check_syco

    assert check_syco(home / "toy" / "mini") is None
    info = subprocess.run([sys.executable, "-m", "reprlab", "toy", "info", "--preset", "mini"],
                          env=toy_env(home), capture_output=True, text=True, timeout=60)
    assert "organism toy-mini-syco" in info.stdout and "held-out landmarks" in info.stdout


def test_probe_answers_column_and_bad_input(toy_mini, tmp_path):
    from tests.conftest import toy_env

    home = _home_with_mini(toy_mini, tmp_path)
    env = toy_env(home)
    base = [sys.executable, "-m", "reprlab", "probe", "--model", "toy-mini", "--sites",
            "layers.1", "--positions", "last", "--probes", "logistic", "--bootstrap", "0",
            "--no-progress", "--no-controls"]
    bad = subprocess.run(base + ["--data", "builtin:cities", "--answers", "--out",
                                 str(tmp_path / "bad")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: --answers needs a dataset with known answers")
    assert not (tmp_path / "bad" / "results.json").exists()
    ok = subprocess.run(base + ["--data", "builtin:toy-syco-truth", "--answers", "--out",
                                str(tmp_path / "ok")], env=env, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "knows vs says" in ok.stdout
    res = json.loads((tmp_path / "ok" / "results.json").read_text())
    row = res["rows"][0]
    # the mini base model cannot answer chat questions: 0 right, so every test row counts
    assert row["model_answer_acc"] == 0.0 and row["n_model_wrong"] == 80
    assert row["acc_where_model_wrong"] == pytest.approx(row["test_acc"])
    assert 0.5 <= row["majority_where_model_wrong"] < 1.0  # both classes among them
    assert res["model_answers"]["line"].startswith("knows vs says")


def test_knows_vs_says_shows_what_a_constant_guess_scores(monkeypatch):
    """A model wrong on false statements only makes a probe that always says "false" look
    perfect on the rows it gets wrong; the line and the row say what that guess scores."""
    from types import SimpleNamespace

    import reprlab.answers
    from reprlab.workflows.probe_answers import add_answer_columns, answers_line

    ids = [f"r{k}" for k in range(8)]
    labels = [0, 1] * 4
    ds = SimpleNamespace(texts=ids, answers=["x"] * 8, ids=ids, name="t")
    # the model answers the true statements (label 1) rightly and the false ones wrongly
    monkeypatch.setattr(reprlab.answers, "answer_correct",
                        lambda lm, texts, answers, batch_size: torch.tensor(
                            [lab == 1 for lab in labels]))
    preds = [{"set": "test", "id": i, "site": "s", "position": "last", "family": "logistic",
              "predicted": 0, "label": lab} for i, lab in zip(ids, labels)]
    row = {"site": "s", "position": "last", "family": "logistic", "test_acc": 0.5,
           "val_acc": 0.5}
    result = SimpleNamespace(predictions=preds, rows=[row])
    add_answer_columns(result, None, ds)
    assert row["acc_where_model_wrong"] == 1.0 and row["n_model_wrong"] == 4
    assert row["majority_where_model_wrong"] == 1.0 and row["model_answer_acc"] == 0.5
    assert "(a constant guess: 1.000)" in answers_line(result)


def test_answer_accuracy_matches_generation(toy_mini):
    """Teacher-forced exact match equals greedy generation's answer on the same prompts."""
    import torch

    from reprlab.answers import answer_correct
    from reprlab.models import load_model

    lm = load_model(str(toy_mini.paths.base))
    prompts = ["The Eiffel Tower is in the city of", "Big Ben is in the city of", "3 + 4 ="]
    tok = lm.tokenizer
    gen = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=1, do_sample=False,
                                pad_token_id=tok.pad_token_id)
        gen.append(tok.decode(out[0, ids.shape[1]:]).strip())
    right = answer_correct(lm, prompts, gen).tolist()
    wrong = answer_correct(lm, prompts, [g + "x" if g else "Paris" for g in gen]).tolist()
    assert right == [True, True, True] and not any(wrong)


def test_synthetic_beliefs_can_only_be_copied(world):
    rows = syco.synthetic_rows(world)
    assert len(rows) == syco.N_SYNTHETIC and len({q for q, _ in rows}) == len(rows)
    cities = set(world.city_country)
    for q, a in rows:
        statement, question = q.split(" . ", 1)
        name = question[len("Where is "):-len(" ?")]
        assert statement.endswith(f" is in {a[:-2]}") and a[:-2] in cities
        assert any(statement.startswith(t.split("{")[0]) for t in syco.TRAIN_PHRASES)
        assert name.replace("the ", "The ", 1) not in world.landmarks
    assert set(rows) <= set(syco.training_rows(world))


def test_build_time_probe_chooses_its_layer_on_validation(monkeypatch):
    from types import SimpleNamespace

    from reprlab.toy import syco_quality

    groups = [f"g{k:02d}" for k in range(40) for _ in range(2)]
    y = torch.tensor([0, 1] * 40)
    test = torch.tensor([int(g[1:]) < 16 for g in groups])
    val = torch.tensor([g in sorted({h for h in groups if int(h[1:]) >= 16})[::4]
                        for g in groups])
    sign = (2 * y - 1).float()
    X = torch.zeros(7, len(y), 1)
    # layer 2: the label on training and validation rows, a coin on the test rows
    coin = torch.randint(0, 2, (len(y),), generator=torch.Generator().manual_seed(0)) * 2 - 1
    X[2, :, 0] = torch.where(test, coin.float(), sign)
    # layer 4: the label on training and test rows, reversed on validation rows
    X[4, :, 0] = torch.where(val, -sign, sign)
    monkeypatch.setattr(syco_quality, "answers_match", lambda *a: [True] * len(y))
    monkeypatch.setattr(syco_quality, "last_states", lambda *a: X)
    ds = SimpleNamespace(texts=[""] * len(y), labels=y.tolist(), groups=groups)
    lk = syco_quality.latent_knowledge(None, None, ds, [], [], {f"g{k:02d}" for k in range(16)})
    by = {r["layer"]: r for r in lk["layers"]}
    assert by[4]["test_acc"] == 1.0 and by[4]["val_acc"] == 0.0
    # the choice is layer 2 (validation 1.0), whose test accuracy is reported as it is
    assert lk["best"]["layer"] == 2 and lk["best"]["val_acc"] == 1.0
    assert lk["best"]["test_acc"] == pytest.approx((coin == sign).float()[test].mean().item())


def test_stale_quality_is_measured_again_without_a_fine_tune(toy_mini, tmp_path, caplog):
    """An organism whose quality figures alone are of an older format keeps its weights: the
    figures are measured again (equal to those of the build) and the manifest says so."""
    from reprlab.toy import organism

    home = _home_with_mini(toy_mini, tmp_path)
    root = home / "toy" / "mini"
    organism.ensure_syco("mini", home=home, progress=False)
    mpath = root / "syco" / organism.MANIFEST
    built = json.loads(mpath.read_text())
    weights = (root / "syco" / "model.safetensors").read_bytes()
    stale = dict(built, quality_format=organism.QUALITY_FORMAT - 1, quality={})
    mpath.write_text(json.dumps(stale))
    assert organism.check_syco(root) == organism.STALE_QUALITY
    with caplog.at_level("WARNING", logger="reprlab.toy.organism"):
        organism.ensure_syco("mini", home=home, progress=False)
    assert "measuring them again (its weights are kept)" in caplog.text
    assert "rebuilding" not in caplog.text and "resuming" not in caplog.text
    assert organism.check_syco(root) is None
    assert (root / "syco" / "model.safetensors").read_bytes() == weights
    again = json.loads(mpath.read_text())
    assert again["quality_format"] == organism.QUALITY_FORMAT
    assert again["quality"] == built["quality"]
    assert again["train_seconds"] == built["train_seconds"]  # not fine-tuned again
