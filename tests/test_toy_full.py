"""The full toy build (slow; the ``toy_full`` fixture of conftest.py builds it, killed
mid-training and resumed): quality bars, and the README's causal-LM examples as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# measured (docs/toy.md, the datasets table): the probe chosen on validation
TRUTH_REASON = "toy-truth's best probe reads 0.766-0.797 at layers.2-4 on build seed 0 and " \
    "0.656-0.828 at layers.3-5 on build seed 1 (split seeds 0-2); the bar is 0.85"


def test_quality_bars(toy_full):
    from reprlab.io import read_json
    from reprlab.toy.build import check_cache

    root = toy_full.root
    assert check_cache(root) is None
    m = read_json(root / "manifest.json")
    q = m["quality"]
    assert q["base"]["train_fact_accuracy"] >= 0.95
    assert q["base"]["patch_example"]["flipped"]
    assert q["base"]["patch_example"]["top"]["patched"] == "Paris"  # token labels read as text (no Ġ)
    assert q["base"]["patch_example"]["top"]["target"] == "London"
    ppl = q["base"]["heldout_perplexity"]
    assert ppl["model"] < ppl["unigram"] / 3
    for split in ("heldout_template", "heldout_arith_heldout", "heldout_judge",
                  "heldout_two_hop", "heldout_compare"):
        assert split in q["base"]["facts"]
    chat = q["sft"]["chat_heldout"]["all"]
    assert chat["well_formed"] >= 0.9
    assert m["n_parameters"] > 1_000_000
    assert len(m["checkpoint_steps"]) >= 5


#: the README sections whose toy examples this file runs (lenses and prefs test their own)
_OURS = ("reprlab toy", "reprlab steer", "reprlab patch", "reprlab drift", "reprlab probe")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(_OURS) and re.search(r"--model toy|reprlab toy path", line):
                cmds.append(line)
    return cmds


def test_readme_toy_commands_run_as_written(toy_full, tmp_path):
    cmds = _readme_commands()
    assert any(c.startswith("reprlab patch ") for c in cmds)
    assert any(c.startswith("reprlab steer generate") for c in cmds)
    assert any(c.startswith("reprlab drift checkpoints") for c in cmds)
    outputs = {}
    for cmd in cmds:
        done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=toy_env(toy_full.home),
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"
        outputs[cmd] = done.stdout
    steer_out = next(v for k, v in outputs.items() if k.startswith("reprlab steer generate"))
    said = dict(re.findall(r"^\[([+-]\d)\] .* This is (\w+) \.", steer_out, flags=re.M))
    assert said == {"-1": "false", "+0": "false", "+1": "true"}, steer_out  # the sign holds
    patch_out = next(v for k, v in outputs.items() if k.startswith("reprlab patch --model"))
    first = next(line for line in patch_out.splitlines() if line.startswith("1\t"))
    assert first.split("\t")[3].strip() == "London" and first.split("\t")[5].strip() == "Paris"


def test_readme_session_example_runs(toy_full, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
              if 'load_model("toy")' in b]
    assert blocks
    monkeypatch.setenv("REPRLAB_HOME", str(toy_full.home))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_steering_along_the_judgement_flips_it_and_a_random_direction_does_not(
        toy_full, monkeypatch):
    """The README's steering example, measured: a mean-difference direction from the
    training comparisons, added at layers.3 on the 60 held-out ones, turns the toy's answer to
    " true" at +1 (raw units) and " false" at -1; a random direction of the same norm leaves
    its judgement as it was. Measured on the toy: said true at -1/0/+1 by 0.00/0.90/1.00 of
    the true statements and 0.00/0.07/1.00 of the false; random directions 0.90-0.93 accurate."""
    import torch

    import reprlab
    from reprlab.data import load_dataset
    from reprlab.steering import fit_steering_vector, from_tensors
    from reprlab.toy.tasks import default_world

    monkeypatch.setenv("REPRLAB_HOME", str(toy_full.home))
    lm = reprlab.load_model("toy")
    site = "layers.3"
    vec = fit_steering_vector(lm, load_dataset("builtin:toy-judge-pairs", kind="pairs"),
                              sites=site, progress=False)
    items = default_world().split("heldout_compare")
    truth = torch.tensor([it.answer == "true" for it in items])
    enc = lm.encode([it.prompt for it in items], padding_side="left")
    t, f = (lm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" true", " false"))

    def says_true(v, coeff: float) -> torch.Tensor:
        with v.steer(lm, coeff=coeff, sites=[site], unit="raw"), torch.no_grad():
            logits = lm.model(**enc).logits[:, -1]
        return logits[:, t] > logits[:, f]

    assert (says_true(vec, 0.0) == truth).float().mean() >= 0.8  # the toy judges them
    assert says_true(vec, 1.0).float().mean() >= 0.95
    assert says_true(vec, -1.0).float().mean() <= 0.05
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        r = torch.randn(vec.directions[site].shape, generator=g)
        rand = from_tensors({site: r / r.norm()}, {site: float(vec.scales[site])})
        for coeff in (-1.0, 1.0):
            assert (says_true(rand, coeff) == truth).float().mean() >= 0.75


@pytest.fixture(scope="module")
def toy_truth_probes(toy_full, tmp_path_factory):
    """`reprlab probe --answers` on toy-truth with split seeds 0, 1 and 2: per seed,
    results.json and its best row (chosen on validation accuracy)."""
    from reprlab.probes.sweep import rank

    runs = []
    for seed in (0, 1, 2):
        out = tmp_path_factory.mktemp("toy-truth") / "probe"
        run = subprocess.run(
            [sys.executable, "-m", "reprlab", "probe", "--model", "toy", "--data",
             "builtin:toy-truth", "--answers", "--positions", "last", "--probes", "logistic",
             "--seed", str(seed), "--no-progress", "--out", str(out)],
            env=toy_env(toy_full.home), capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr
        res = json.loads((out / "results.json").read_text())
        runs.append((res, max(res["rows"], key=rank)))
    return runs


def test_toy_truth_probe_reads_more_than_the_words_and_the_toy_says(toy_truth_probes):
    """toy-truth ends where the toy gives its verdict: a probe there reads truth above the
    bag-of-words baseline (0.500 by design) and above the toy's own verdicts on the same rows.
    Measured (split seeds 0/1/2): build seed 0 (AVX2) probe 0.766/0.797/0.797, the toy
    0.500/0.625/0.547; build seed 1 probe 0.828/0.656/0.703, the toy 0.609/0.547/0.562."""
    for res, best in toy_truth_probes:
        assert res["surface"]["test_acc"] <= 0.6
        assert best["site"] != "embed"
    probe = sum(b["test_acc"] for _, b in toy_truth_probes) / 3
    said = sum(b["model_answer_acc"] for _, b in toy_truth_probes) / 3
    assert probe >= 0.65
    assert probe >= said + 0.1


@pytest.mark.xfail(strict=False, reason=TRUTH_REASON)
def test_toy_truth_bar(toy_truth_probes):
    for _, best in toy_truth_probes:
        assert best["site"] in ("layers.1", "layers.2", "layers.3", "layers.4")
        assert best["test_acc"] >= 0.85
