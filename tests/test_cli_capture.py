from __future__ import annotations

import json

import pytest
from conftest import save_tiny

from reprlab.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_capture_and_store_info_end_to_end(tmp_path, tiny_dir, capsys):
    out = tmp_path / "cap"
    rc = main(["capture", "--model", str(tiny_dir), "--data", "builtin:cities", "--limit", "40",
               "--sites", "layers.*", "--positions", "last,mean", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    assert "captured: 40 rows × 3 sites × 2 positions" in capsys.readouterr().out
    rc = main(["capture", "--model", str(tiny_dir), "--data", "builtin:cities", "--limit", "40",
               "--sites", "layers.*", "--positions", "last,mean", "--out", str(out),
               "--no-progress"])
    assert rc == 0 and "cache hit" in capsys.readouterr().out
    assert main(["store", "info", str(out), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 40 and info["sites"] == ["layers.0", "layers.1", "layers.2"]
    assert info["labels"] == ["false", "true"] and info["dataset"] == "cities"
    # activation norms, as docs/workflows.md tells users to read before steering
    from reprlab.store import ActivationStore

    store = ActivationStore.open(out)
    for site in info["sites"]:
        for pos in ("last", "mean"):
            want = store[site, pos].float().norm(dim=-1)
            got = info["norms"][site][pos]
            assert got["rows"] == 40
            assert got["median"] == pytest.approx(float(want.median()), rel=0.05)
            assert got["p10"] <= got["median"] <= got["p90"]
    assert main(["store", "info", str(out)]) == 0
    table = capsys.readouterr().out
    assert "median ‖activation‖" in table and "layers.2" in table.split("norms")[1]
    assert main(["store", "info", str(out), "--json", "--norm-rows", "0"]) == 0
    assert "norms" not in json.loads(capsys.readouterr().out)
    assert main(["store", "info", str(out), "--json", "--norm-rows", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["norms"]["layers.0"]["mean"]["rows"] == 7


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


@pytest.mark.parametrize("args, needle", [
    (["--data", "nope.csv"], "not found"),
    (["--sites", "layers.9"], "out of range"),
    (["--sites", "blocks.1"], "unknown site"),
    (["--positions", "lastish"], "unknown position"),
    (["--model", "./no/such/model"], "does not exist"),
    (["--model", "no-such-org/no-such-model-xyz"], "not available locally"),
])
def test_capture_bad_input_one_line(tmp_path, tiny_dir, capsys, args, needle):
    base = {"--model": str(tiny_dir), "--data": "builtin:cities", "--sites": "layers.0",
            "--positions": "mean", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["capture", "--limit", "10", "--no-progress"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    assert needle in _err(capsys)


def test_bad_files_one_line(tmp_path, tiny_dir, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello,1\nworld,0\n")
    assert main(["capture", "--model", str(tiny_dir), "--data", str(bad), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "text" in _err(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["capture", "--model", str(tiny_dir), "--limit", "10", "--out",
                 str(blocker / "sub"), "--no-progress"]) == 2
    assert "cannot write" in _err(capsys)
    assert main(["store", "info", str(tmp_path / "missing")]) == 2
    assert "no activation store" in _err(capsys)
