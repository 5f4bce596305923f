"""Every bad input ends as exit 2 with one clear line on stderr (no traceback).

One table: (command line, expected text in the line). Placeholders in braces are files made
once by the ``paths`` fixture (a tiny GPT-2 saved to disk, another of the same width, a probe
run, a steering vector, broken files). To cover a new case, add a row.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_tiny

from reprlab.cli import main

LONG = " ".join(["word"] * 400)  # longer than the tiny GPT-2's 256 positions

CASES: list[tuple[str, list[str], str]] = [
    # labels (item 5)
    ("label NaN", ["capture", "--model", "{model}", "--data", "{csv_nan}", "--out", "{out}"],
     "has no label"),
    ("label 0.5", ["capture", "--model", "{model}", "--data", "{csv_half}", "--out", "{out}"],
     "not a whole class index"),
    ("labels 0 and 2", ["capture", "--model", "{model}", "--data", "{csv_gap}", "--out",
                        "{out}"], "have no rows"),
    # sites, models (item 10)
    ("slice step 0", ["capture", "--model", "{model}", "--sites", "layers.0:3:0", "--out",
                      "{out}"], "step 0"),
    ("empty slice", ["capture", "--model", "{model}", "--sites", "layers.5:9", "--out",
                     "{out}"], "selects no layer"),
    ("truncated weights", ["capture", "--model", "{bad_weights}", "--out", "{out}"],
     "corrupt or truncated"),
    ("garbage weights", ["capture", "--model", "{garbage_weights}", "--out", "{out}"],
     "corrupt or truncated"),
    ("corrupt config.json", ["capture", "--model", "{bad_config}", "--out", "{out}"],
     "no readable config.json"),
    # other model of the same width (item 3)
    ("probe apply, other model", ["probe", "apply", "{probe}", "--text", "Paris is in France.",
                                  "--model", "{other}"], "does not fit this model"),
    ("steer validate --from-probe, other model",
     ["steer", "validate", "--model", "{other}", "--from-probe", "{probe}", "--site",
      "layers.1", "--coeffs", "-1,1", "--out", "{out}", "--no-side-effects", "--no-progress"],
     "fitted on"),
    # text files (item 10)
    ("probe apply --file missing", ["probe", "apply", "{probe}", "--file", "{missing}"],
     "does not exist"),
    ("probe apply --file latin-1", ["probe", "apply", "{probe}", "--file", "{latin1}"],
     "not UTF-8"),
    ("steer validate --neutral binary",
     ["steer", "validate", "--model", "{model}", "--vector", "{vec}", "--site", "layers.1",
      "--neutral", "{binary}", "--coeffs", "-1,1", "--out", "{out}", "--no-progress"],
     "binary file"),
    ("steer generate --prompts-file directory",
     ["steer", "generate", "--model", "{model}", "--vector", "{vec}", "--prompts-file",
      "{tmp}"], "is a directory"),
    # non-finite numbers (item 4)
    ("export --coeff nan", ["steer", "export", "{vec}", "--gguf", "{tmp}/v.gguf", "--coeff",
                            "nan"], "finite"),
    ("NaN probe direction",
     ["steer", "validate", "--model", "{model}", "--from-probe", "{nan_probe}", "--site",
      "layers.1", "--coeffs", "-1,1", "--out", "{out}", "--no-side-effects", "--no-progress"],
     "not finite"),
    ("NaN readout probe",
     ["steer", "validate", "--model", "{model}", "--vector", "{vec}", "--site", "layers.1",
      "--readout", "{nan_probe}", "--data", "builtin:cities", "--limit", "8", "--coeffs",
      "-1,1", "--out", "{out}", "--no-side-effects", "--no-progress"], "NaN or infinite"),
    # GGUF files (item 10)
    ("export --gguf to a directory", ["steer", "export", "{vec}", "--gguf", "{tmp}"],
     "is a directory"),
    ("crafted GGUF header", ["steer", "generate", "--model", "{model}", "--vector",
                             "{crafted_gguf}", "--prompt", "Hello"], "not a readable GGUF"),
    ("GGUF with bad JSON metadata", ["steer", "import", "{badjson_gguf}", "--out", "{out}"],
     "not valid JSON"),
    # sampling and caps (items 9, 10)
    ("--sample --temperature 0", ["steer", "generate", "--model", "{model}", "--vector",
                                  "{vec}", "--prompt", "Hello", "--sample", "--temperature",
                                  "0"], "--temperature must be"),
    ("--coeffs 0:1:100000000", ["steer", "generate", "--model", "{model}", "--vector", "{vec}",
                                "--prompt", "Hello", "--coeffs", "0:1:100000000"],
     "more than the limit"),
    ("steer validate --coeffs too many",
     ["steer", "validate", "--model", "{model}", "--vector", "{vec}", "--coeffs",
      "-1:1:5000", "--out", "{out}"], "more than the limit"),
    ("steer generate past the position limit",
     ["steer", "generate", "--model", "{model}", "--vector", "{vec}", "--prompt", LONG,
      "--max-new-tokens", "8"], "positions"),
    ("patch --k 100000", ["patch", "--model", "{model}", "--source", "the cat sat",
                          "--target", "the dog sat", "--k", "100000"], "more than the limit"),
    ("probe --bootstrap 10**9", ["probe", "--model", "{model}", "--bootstrap", "1000000000",
                                 "--out", "{out}"], "more than the limit"),
    ("probe --controls 10**6", ["probe", "--model", "{model}", "--controls", "1000000",
                                "--out", "{out}"], "more than the limit"),
    # silent clamps (item 11)
    ("patch --pos 100", ["patch", "--model", "{model}", "--source", "the cat sat",
                         "--target", "the dog sat", "--pos", "100", "--out", "{out}"],
     "outside the source prompt"),
    ("patch sweep --positions 50",
     ["patch", "sweep", "--model", "{model}", "--source", "the cat sat", "--target",
      "the dog sat", "--positions", "50", "--tokens", "a,b", "--out", "{out}"],
     "lie outside"),
    ("patch prompt past the position limit",
     ["patch", "--model", "{model}", "--source", LONG, "--target", "the dog sat", "--out",
      "{out}"], "more than the 256 positions"),
    # templates (item 10)
    ("drift train --template '{text'",
     ["drift", "train", "--model", "{model}", "--data", "{jsonl}", "--template", "{{text",
      "--steps", "1", "--out", "{out}", "--no-progress"], "--template"),
]


def _write_gguf_with_bad_json(vec_dir: Path, out: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(out), "controlvector")
    w.add_string("controlvector.model_hint", "gpt2")
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.1", torch.ones(32).numpy())
    w.add_string("reprlab.scales", "{not json")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    model = save_tiny(root / "model")
    other = save_tiny(root / "other", seed=1)
    p: dict[str, str] = {"model": str(model), "other": str(other), "tmp": str(root)}
    for name, edit in (("bad_weights", lambda d: (d / "model.safetensors").open("r+b")
                        .truncate(1000)),
                       ("garbage_weights", lambda d: (d / "model.safetensors")
                        .write_bytes(b"\xff" * 4096)),
                       ("bad_config", lambda d: (d / "config.json").write_text("{oops"))):
        d = root / name
        shutil.copytree(model, d)
        edit(d)
        p[name] = str(d)
    rows = [("Paris is in France.", 1), ("Rome is in Spain.", 0)] * 4
    for name, bad in (("csv_nan", "NaN"), ("csv_half", "0.5"), ("csv_gap", None)):
        f = root / f"{name}.csv"
        lines = ["text,label"] + [f"{t},{lab * 2 if bad is None else lab}" for t, lab in rows]
        if bad is not None:
            lines[3] = f"Berlin is in Germany.,{bad}"
        f.write_text("\n".join(lines) + "\n")
        p[name] = str(f)
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    p.update(latin1=str(root / "latin1.txt"), binary=str(root / "binary.bin"),
             missing=str(root / "nope.txt"))
    jsonl = root / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"row {i} of the set"}) for i in range(8)))
    p["jsonl"] = str(jsonl)
    # a probe run and a steering vector on the tiny model
    probe = root / "probe"
    assert main(["probe", "--model", str(model), "--data", "builtin:cities", "--sites",
                 "layers.1,layers.2", "--positions", "last", "--limit", "60", "--no-controls",
                 "--bootstrap", "0", "--out", str(probe), "--no-progress"]) == 0
    p["probe"] = str(probe)
    nan_probe = root / "nan_probe"
    shutil.copytree(probe, nan_probe)
    from safetensors.torch import load_file, save_file

    for f in (nan_probe / "probes").glob("*.safetensors"):
        t = load_file(str(f))
        save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                   for k, v in t.items()}, str(f))
    p["nan_probe"] = str(nan_probe)
    vec = root / "vec"
    assert main(["steer", "vector", "--model", str(model), "--pairs", "builtin:pairs-sentiment",
                 "--sites", "layers.1,layers.2", "--limit", "8", "--out", str(vec),
                 "--no-progress"]) == 0
    p["vec"] = str(vec)
    crafted = root / "crafted.gguf"
    assert main(["steer", "export", str(vec), "--gguf", str(crafted)]) == 0
    crafted.write_bytes(crafted.read_bytes()[:36])  # header cut inside the key-value table
    p["crafted_gguf"] = str(crafted)
    _write_gguf_with_bad_json(vec, root / "badjson.gguf")
    p["badjson_gguf"] = str(root / "badjson.gguf")
    return p


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(paths, tmp_path, capsys, name, argv, expected):
    args = [a.format(**paths, out=str(tmp_path / "out")) for a in argv]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines()
             if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_long_text_is_truncated_not_a_crash(paths, capsys):
    """Item 6: text past the position limit is clamped (probe apply), said once, exit 0."""
    assert main(["probe", "apply", paths["probe"], "--text", LONG]) == 0
    out = capsys.readouterr()
    assert "word" in out.out


def test_patch_records_the_position_it_used(paths, tmp_path):
    out = tmp_path / "p"
    assert main(["patch", "--model", paths["model"], "--source", "the cat sat", "--target",
                 "the dog sat", "--pos", "-1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    n = len(json.loads((out / "results.json").read_text())["target_top"])
    assert n == 5
    assert res["pos"] == -1
    assert res["pos_used"]["source"] == res["pos_used"]["target"] >= 1


def test_gguf_holds_no_local_paths(paths, tmp_path):
    import gguf

    out = tmp_path / "v.gguf"
    assert main(["steer", "export", paths["vec"], "--gguf", str(out)]) == 0
    raw = out.read_bytes()
    assert paths["tmp"].encode() not in raw
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("reprlab.source").contents() == "pairs-sentiment" or \
        "/" not in reader.get_field("reprlab.source").contents()


def test_manifest_keeps_a_field_named_tokens(paths, tmp_path):
    out = tmp_path / "sweep"
    assert main(["patch", "sweep", "--model", paths["model"], "--source", "the cat sat",
                 "--target", "the dog sat", "--tokens", "a,b", "--sites", "layers.0",
                 "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["tokens"] == "a,b"


def test_full_disk_anywhere_is_one_line(paths, tmp_path, capsys, monkeypatch):
    import errno

    import reprlab.io as rio

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rio, "atomic_write_bytes", full)
    code = main(["patch", "--model", paths["model"], "--source", "the cat sat", "--target",
                 "the dog sat", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and err[-1] == errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert errors[0].startswith("error: No space left on device writing ") and "--out" in err[-1]


def test_capture_says_how_many_texts_were_truncated(paths, tmp_path, capsys):
    data = tmp_path / "long.csv"
    data.write_text(f"text,label\n{LONG},1\nshort text,0\n{LONG} again,1\nanother,0\n")
    assert main(["capture", "--model", paths["model"], "--data", str(data), "--sites",
                 "layers.0", "--positions", "last", "--out", str(tmp_path / "c"),
                 "--max-length", "100000", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "2 of 4 texts were longer than 256 tokens and were truncated" in out.out
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert man["n_truncated"] == 2 and man["max_length"] == 256


def test_export_to_a_read_only_place_is_one_line(paths, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code = main(["steer", "export", paths["vec"], "--gguf", str(tmp_path / "ro" / "v.gguf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: cannot write to ") and "Read-only" in err[0]


def test_spearman_of_nan_is_nan_not_one():
    import math

    from reprlab.steering.metrics import spearman

    assert spearman([1, 2, 3], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2, 3], [float("nan")] * 3))


def test_probe_run_records_truncated_rows(paths, tmp_path):
    data = tmp_path / "mixed.csv"
    rows = [(f"{LONG} {i}" if i % 4 == 0 else f"short text number {i}", i % 2) for i in range(24)]
    data.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    out = tmp_path / "probe"
    assert main(["probe", "--model", paths["model"], "--data", str(data), "--sites", "layers.1",
                 "--positions", "last", "--no-controls", "--bootstrap", "0", "--out", str(out),
                 "--no-progress"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["inputs"]["data"]["truncated_rows"] == 6
    assert man["inputs"]["data"]["max_length"] == 256


def test_safetensors_disk_full_is_one_line(monkeypatch, capsys):
    import reprlab.cli as cli

    class SafetensorError(Exception):
        pass

    def boom(args):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull, message: \"No space left on device\" })")

    parser = cli.build_parser("capture")
    monkeypatch.setattr(cli, "build_parser", lambda command=None: parser)
    import types

    monkeypatch.setattr(parser, "parse_args", lambda argv: types.SimpleNamespace(
        verbose=False, _handler=boom, command="capture"))
    assert cli.main(["capture"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Error while serializing") and \
        "free some space" in err[0]
