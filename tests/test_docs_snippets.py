"""Every Python snippet in the docs runs: each fenced ``python`` block of README.md and docs/*.md
is executed in order, per file, on tiny offline models (any model name loads a tiny random
model of the same kind; datasets that live on the hub are replaced by local files).

What a snippet leaves undefined (``x``, ``clouds``, two models ``base`` and ``chat``...) is
given below, with the shape the snippet's comment states.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import make_tiny

import reprlab
import reprlab.data
import reprlab.models

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
#: blocks about the packages being built now are run by their own tests once they settle
NEW = re.compile(r"\breprlab(?:\.|\s+import\s+)(toy|prefs|lenses|sweeps)\b")
ROWS = 200  # rows of a built-in dataset the snippets see (the docs' runs use all)
LAYERS = 8  # the snippets read layers up to layers.6

#: what must exist before a block runs: (file, block index) -> code (the shell commands the
#: docs show just before that block)
SETUP = {
    ("README.md", 1): "reprlab.capture(lm, 'builtin:cities', 'layers.*', ['last', 'mean'], "
                      "out='runs/cap', progress=False)",
}


def blocks(doc: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each fenced python block of ``doc``."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)
            if not NEW.search(m.group(1))]


def test_every_doc_has_its_blocks_found():
    counts = {doc: len(blocks(doc)) for doc in DOCS}
    assert counts["docs/workflows.md"] == 4 and counts["docs/foundation.md"] >= 4
    assert counts["README.md"] >= 3, counts


@pytest.fixture(scope="module")
def models():
    """One tiny encoder (for the bundled MiniLM) and two tiny causal LMs of the same width."""
    return {"encoder": make_tiny("bert", layers=LAYERS), "causal": make_tiny("gpt2", layers=LAYERS),
            "other": make_tiny("gpt2", layers=LAYERS, seed=1)}


def _files(tmp: Path) -> None:
    rows = [("Paris is in France.", 1), ("Paris is in Peru.", 0)] * 20
    with (tmp / "my.csv").open("w") as fh:
        fh.write("sentence,is_true\n" + "".join(f"{t},{y}\n" for t, y in rows))
    with (tmp / "pairs.jsonl").open("w") as fh:
        for i in range(12):
            fh.write(json.dumps({"positive": f"I love day {i}.", "negative": f"I hate day {i}."})
                     + "\n")
    with (tmp / "prefs.jsonl").open("w") as fh:
        for i in range(12):
            fh.write(json.dumps({"prompt": f"Question {i}?", "chosen": " A kind answer.",
                                 "rejected": " A rude answer."}) + "\n")


@pytest.fixture
def doc_env(models, tmp_path, monkeypatch):
    """cwd in a temp dir with the files the snippets name; model and dataset loaders offline."""
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    loaded_names: list[str] = []

    def load_model(name=None, **kwargs):
        loaded_names.append(str(name))
        key = "encoder" if name in (None, "minilm") else "causal"
        return models[key]

    real_load_dataset = reprlab.data.load_dataset

    def load_dataset(spec, *args, **kwargs):
        if isinstance(spec, str) and spec.startswith("hf:"):
            spec = "prefs.jsonl"  # the hub is offline: the same columns from a local file
        if isinstance(spec, str) and spec.startswith("builtin:"):
            kwargs["limit"] = min(kwargs.get("limit") or ROWS, ROWS)
        return real_load_dataset(spec, *args, **kwargs)

    # the top-level name first: its lazy lookup would otherwise record the stand-in as the
    # value to restore
    monkeypatch.setattr(reprlab, "load_model", reprlab.load_model)
    monkeypatch.setattr(reprlab, "load_model", load_model)
    monkeypatch.setattr(reprlab.models, "load_model", load_model)
    monkeypatch.setattr(reprlab.data, "load_dataset", load_dataset)
    d = models["causal"].arch.hidden_size
    g = torch.Generator().manual_seed(0)
    namespace = {
        "lm": models["causal"], "base": models["causal"], "chat": models["other"],
        "vector": torch.randn(d, generator=g),
        "activations": torch.randn(5, models["encoder"].arch.hidden_size, generator=g),
        "x": torch.randn(64, 8, generator=g), "y": torch.randn(48, 8, generator=g) + 0.5,
        "clouds": [torch.randn(64, 8, generator=g) + 0.3 * k for k in range(3)],
        "series": [1.0] * 10 + [5.0] * 10, "steps": list(range(0, 200, 10)),
    }
    return namespace, loaded_names


@pytest.mark.parametrize("doc", DOCS)
def test_doc_snippets_run(doc, doc_env):
    namespace, loaded = doc_env
    found = blocks(doc)
    if not found:
        pytest.skip(f"{doc} has no python blocks")
    for i, (line, code) in enumerate(found):
        if (doc, i) in SETUP:
            exec(SETUP[(doc, i)], namespace)  # noqa: S102 - the docs' own setup
        try:
            exec(compile(code, f"{doc}:{line}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"{doc}, python block at line {line}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    _check_effects(doc, namespace, loaded)


def _check_effects(doc: str, ns: dict, loaded: list[str]) -> None:
    """The snippets did what their comments say."""
    if doc == "docs/workflows.md":
        assert set(ns["probes"]) and all(callable(p) for p in ns["probes"].values())
        probs = ns["result"].best["probe"](ns["activations"])
        assert probs.shape[0] == 5
        assert Path("vec/steering_vector.safetensors").exists() and Path("control.gguf").exists()
        assert [r["coeff"] for r in ns["rows"]] == [-4, 0, 4]
        assert ns["s"].results["probs"].sum(-1).allclose(torch.ones(1))
        out = ns["out"]
        assert set(out) == {"sinkhorn", "cka", "procrustes"}
        assert out["sinkhorn"].value.shape == (2,) and out["sinkhorn"].floor is not None
        assert bool(ns["d"].converged.all())
    if doc == "docs/foundation.md":
        assert ns["cache"]["layers.3"].shape[-1] == ns["lm"].arch.hidden_size
        assert ns["x"].shape == (ROWS, ns["lm"].arch.hidden_size)
        assert len(ns["train"]) + len(ns["val"]) + len(ns["test"]) == len(ns["ds"]) == 40
        assert len(ns["prefs"]) == 12 and len(ns["pairs"]) == 12
    if doc == "README.md":
        assert ns["x"].shape[0] == ROWS  # runs/cap holds the capture the README runs before
        assert ns["again"].rows and ns["result"].best["test_acc"] is not None
        assert ns["s"].results and "patched" in ns["s"].logs


def test_workflow_drift_compare_takes_the_documented_list():
    from reprlab.drift import compare

    g = torch.Generator().manual_seed(1)
    clouds = [torch.randn(40, 6, generator=g) + k for k in range(3)]
    listed = compare(clouds, pairs=[(0, 1), (1, 2)], measures=["sinkhorn", "cka"])
    stacked = compare(torch.stack(clouds), pairs=[(0, 1), (1, 2)], measures=["sinkhorn", "cka"])
    for m in ("sinkhorn", "cka"):
        assert torch.equal(listed[m].value, stacked[m].value)
    from reprlab.errors import DataError

    with pytest.raises(DataError, match="same n"):
        compare([torch.zeros(40, 6), torch.zeros(30, 6)], pairs=[(0, 1)], measures=["cka"])
