"""The full toy build (slow; the ``toy_full`` fixture of conftest.py builds it, killed
mid-training and resumed): quality bars, and the README's causal-LM examples as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import toy_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


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
