"""The toy world, its tokenizer, the build cache and the toy models (mini build, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from reprlab.cli import main
from reprlab.toy import tasks
from reprlab.toy.build import check_cache, checkpoint_steps
from reprlab.toy.tokenizer import build_tokenizer
from reprlab.toy.variants import build
from reprlab.toy.world import World, WorldConfig


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def tok(world):
    return build_tokenizer(tasks.vocabulary_texts(world))


def test_world_is_deterministic_and_knows_its_landmarks(world):
    again = World()
    assert [it.text for it in again.items] == [it.text for it in world.items]
    assert world.landmarks["The Eiffel Tower"] == "Paris"
    assert world.landmarks["Buckingham Palace"] == "London"
    assert world.city_country["Paris"] == "France"
    assert world.city_country["London"] == "United Kingdom"
    other = World(WorldConfig(seed=1))
    assert other.arith_pairs["train"] != world.arith_pairs["train"]


def test_heldout_splits_are_unseen_in_training(world):
    pairs = world.arith_pairs
    assert not set(pairs["train"]) & set(pairs["heldout"])
    assert not set(pairs["train"]) & set(pairs["prefs"])
    assert not set(pairs["prefs"]) & set(pairs["heldout"])
    train_text = set(world.pretrain_texts())
    for split in world.splits():
        if split == "train":
            continue
        held = world.split(split)
        assert held, split
        assert not {it.text for it in held} & train_text, split
    # a held-out template's facts are known through the other template
    held_lm = [it for it in world.split("heldout_template") if it.task == "landmark_city_t2"]
    trained = {it.prompt.split(" is in")[0] for it in world.split("train")
               if it.task == "landmark_city"}
    assert {it.prompt.split(" stands")[0] for it in held_lm} <= trained


def test_sft_heldout_questions_are_not_trained(world):
    rows = tasks.chat_examples(world)
    train_q = {q for q, _, s in rows if s == "train"}
    held_q = {q for q, _, s in rows if s == "heldout"}
    assert held_q and not held_q & train_q
    assert {"Where is the Eiffel Tower ?", "Where is Buckingham Palace ?"} <= train_q | held_q


def test_preference_shifts_follow_their_definitions(world):
    shifts = tasks.preference_shifts(world)
    assert list(shifts) == ["train", "in-domain", "harder", "cross-domain", "orthogonal"]
    sums = {s: {p for p in shifts[s].prompt} for s in ("train", "in-domain")}
    assert not sums["train"] & sums["in-domain"]
    for s in ("train", "in-domain", "harder"):
        for p, c, r in zip(shifts[s].prompt, shifts[s].chosen, shifts[s].rejected):
            operands = [int(x) for x in p.split()[2:-1:2]]
            assert len(operands) == (3 if s == "harder" else 2)
            assert c == f"{sum(operands)} ."
            assert 1 <= abs(int(r.split()[0]) - sum(operands)) <= 2
    cross = shifts["cross-domain"]
    assert cross.chosen[cross.prompt.index("Where is the Eiffel Tower ?")] == "Paris ."
    for c, r in zip(shifts["orthogonal"].chosen, shifts["orthogonal"].rejected):
        assert c.split()[:2] == r.split()[:2] and c != r


def test_judge_pairs_swap_the_numbers_of_trained_true_comparisons(world):
    pairs = tasks.judge_pairs(world)
    trained = {it.prompt: it.answer for it in world.split("train") if it.task == "compare"}
    assert len(pairs) == min(200, sum(a == "true" for a in trained.values()))
    for pos, neg in zip(pairs.positive, pairs.negative):
        a, b = pos.split(" is larger than ")
        assert int(a) > int(b.split()[0]) and trained[pos] == "true"
        assert neg == f"{b.split()[0]} is larger than {a} . This is" and trained[neg] == "false"


def test_tokenizer_round_trips_every_world_text_without_unknowns(world, tok):
    texts = tasks.vocabulary_texts(world)
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    assert all(tok.unk_token_id not in ids for ids in enc)
    for text, ids in zip(texts[:500], enc[:500]):
        assert tok.decode(ids) == text
    assert tok("The Eiffel Tower")["input_ids"][0] == tok.bos_token_id
    assert len(tok(" Paris", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok("The", add_special_tokens=False)["input_ids"]) == 1


def test_training_examples_hold_no_unknown_token(world, tok):
    from reprlab.toy.train import encode_chats, encode_texts

    chats = encode_chats(tok, [(q, a) for q, a, _ in tasks.chat_examples(world)])
    texts = encode_texts(tok, world.pretrain_texts())
    assert all(tok.unk_token_id not in ex.ids for ex in chats + texts)
    ex = chats[0]
    assert tok.convert_ids_to_tokens(list(ex.ids[ex.loss_from:]))[-2:] == ["Ġ.", "<|end|>"]


def test_chat_prompt_is_a_token_prefix_of_the_full_turn(tok):
    msgs = [{"role": "user", "content": "What is 2 + 3 ?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "5 ."}],
                                   tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert f_ids[:len(p_ids)] == p_ids
    assert tok.convert_ids_to_tokens(f_ids[len(p_ids):]) == ["Ġ5", "Ġ.", "<|end|>"]
    assert tok.decode(f_ids[len(p_ids):]) == " 5 .<|end|>"


def test_checkpoint_steps_are_log_spaced():
    steps = checkpoint_steps(900, 7)
    assert steps[0] == 0 and steps[-1] == 900 and steps == sorted(set(steps))
    ratios = [b / a for a, b in zip(steps[1:], steps[2:])]
    assert max(ratios) / min(ratios) < 1.3


def test_mini_build_is_a_standard_llama_with_manifest(toy_mini):
    import transformers

    from reprlab.models import load_model

    m = toy_mini.paths.manifest
    for key in ("format", "seed", "world_hash", "preset_config", "versions", "quality", "files"):
        assert key in m
    assert m["train"]["base_final_loss"] < 5.5 < float(torch.log(torch.tensor(m["vocab_size"])))
    lm = load_model(str(toy_mini.base))
    assert isinstance(lm.model, transformers.LlamaForCausalLM)
    assert lm.is_causal and lm.arch.n_layers == 2
    assert lm.tokenizer.chat_template
    assert [p.name for p in toy_mini.paths.checkpoints] == [
        f"step-{s:06d}" for s in m["checkpoint_steps"]]
    assert check_cache(toy_mini.paths.root) is None


def test_alias_loads_the_cached_build_without_rebuilding(toy_mini, monkeypatch):
    from reprlab.models import load_model

    monkeypatch.setenv("REPRLAB_HOME", str(toy_mini.home))
    before = (toy_mini.base / "model.safetensors").stat().st_mtime_ns
    lm = load_model("toy-mini-sft")
    assert lm.name == "reprlab/toy-mini-sft"
    assert (toy_mini.base / "model.safetensors").stat().st_mtime_ns == before
    out = lm.model.generate(**lm.encode(["What is 2 + 3 ?"]), max_new_tokens=2,
                            do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert out.shape[1] >= 3


def _states(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_crashed_build_resumes_to_the_same_model(tmp_path, toy_mini, monkeypatch):
    """A crash mid-training (after a state commit) resumes; the result equals an
    uninterrupted build bit for bit (one thread)."""
    import reprlab.toy.train as train

    real = train.run_phase
    calls = {"n": 0}

    def crashing(model, batches, opt, sched, *, start, steps, on_step=None, **kw):
        def step_then_maybe_crash(done, loss, n):
            on_step(done, loss, n)
            calls["n"] += 1
            if calls["n"] == 25:
                raise RuntimeError("simulated crash")
        return real(model, batches, opt, sched, start=start, steps=steps,
                    on_step=step_then_maybe_crash, **kw)

    monkeypatch.setattr(train, "run_phase", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build("mini", home=tmp_path, progress=False)
    partial = tmp_path / "toy" / ".mini.partial"
    assert (partial / "state.safetensors").exists()
    assert not (tmp_path / "toy" / "mini").exists()  # nothing half-written looks complete
    monkeypatch.setattr(train, "run_phase", real)
    paths = build("mini", home=tmp_path, progress=False)
    assert not partial.exists()
    for which in ("base", "sft"):
        a, b = _states(getattr(paths, which)), _states(getattr(toy_mini.paths, which))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), which
    assert paths.manifest["world_hash"] == toy_mini.paths.manifest["world_hash"]


def test_corrupt_or_foreign_cache_is_rebuilt(tmp_path, caplog):
    from reprlab.toy.variants import ensure_built

    paths = build("mini", home=tmp_path, progress=False)
    weights = paths.base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "corrupt" in check_cache(paths.root)
    with caplog.at_level("WARNING"):
        again = ensure_built("mini", home=tmp_path, progress=False)
    assert "rebuilding" in caplog.text and check_cache(again.root) is None
    m = json.loads((paths.root / "manifest.json").read_text())
    m["format"] = 0
    (paths.root / "manifest.json").write_text(json.dumps(m))
    assert "format 0" in check_cache(paths.root)
    caplog.clear()
    with caplog.at_level("WARNING"):
        ensure_built("mini", home=tmp_path, progress=False)
    assert "format 0" in caplog.text and check_cache(paths.root) is None
    m = json.loads((paths.root / "manifest.json").read_text())
    m["preset_config"]["base_steps"] += 1
    (paths.root / "manifest.json").write_text(json.dumps(m))
    assert "other settings" in check_cache(paths.root)


def test_cli_build_path_info(toy_mini, monkeypatch, capsys):
    monkeypatch.setenv("REPRLAB_HOME", str(toy_mini.home))
    assert main(["toy", "build", "--preset", "mini", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "training facts" in out and "--model toy-mini" in out
    # the patch example names its tokens as text, not as the tokenizer's "ĠLondon"
    assert "patching layers.-2 at the last token" in out and "Ġ" not in out
    assert main(["toy", "path", "--preset", "mini", "--model", "sft"]) == 0
    assert capsys.readouterr().out.strip() == str(toy_mini.sft)
    assert main(["toy", "info", "--preset", "mini", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "mini"


@pytest.mark.parametrize("argv, env, expected", [
    (["toy", "path"], "empty", "not built yet"),
    (["toy", "build", "--preset", "huge"], "empty", "unknown --preset"),
    (["toy", "build", "--preset", "mini"], "file", "cannot write the toy model cache"),
])
def test_cli_bad_input_is_one_line(argv, env, expected, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    if env == "file":
        (tmp_path / "f").write_text("x")
        home = tmp_path / "f" / "home"
    monkeypatch.setenv("REPRLAB_HOME", str(home))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
