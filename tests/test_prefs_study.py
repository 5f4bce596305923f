"""The organism study (examples/syco_study.py) at mini scale: each method's learning rate is
chosen by a sweep on the validation set, the chosen trial is seed 0, and the comparison
trains the other seeds and scores every shift with paired differences from DPO."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reprlab.io import read_json

STUDY = Path(__file__).parents[1] / "examples" / "syco_study.py"


def test_study_tunes_on_validation_then_compares_seeds(toy_mini, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("syco_study", STUDY)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    out = tmp_path / "study"
    rc = study.main(["--out", str(out), "--methods", "dpo,rank", "--lrs", "1e-4,0.05",
                     "--seeds", "2", "--workers", "1", "--model", str(toy_mini.sft),
                     "--train-options", f"--steps 3 --limit 8 --schedule constant "
                     f"--ref-cache {tmp_path / 'cache'}"])
    assert rc == 0

    def trials(sweep):
        return [read_json(p / "results.json")
                for p in sorted((out / "sweeps" / sweep / "trials").iterdir())]

    for name in ("dpo", "rank"):
        first = trials(name)
        assert sorted(t["config"]["lr"] for t in first) == [1e-4, 0.05]
        scores = {t["config"]["lr"]: t["validation"]["score"] for t in first}
        lr = max(scores, key=scores.get)
        # seed 0 is the trial with the best validation score, copied whole
        seed0 = read_json(out / "runs" / name / "results.json")
        assert seed0["config"]["lr"] == lr
        seed1 = read_json(out / "runs" / f"{name}-seed1" / "results.json")
        assert seed1["config"]["lr"] == lr
        assert seed1["config"]["method_options"] == seed0["config"]["method_options"]
        best = max(scores.values())
        if name == "rank":  # α is swept second, at the chosen learning rate
            second = trials("rank-alpha")
            assert all(t["config"]["lr"] == lr for t in second)
            assert sorted(t["config"]["method_options"]["alpha"] for t in second) == [
                0.0625, 0.25, 1.0]
            best = max(best, *(t["validation"]["score"] for t in second))
        else:
            assert not (out / "sweeps" / "dpo-alpha").exists()
        assert seed0["validation"]["score"] == best
    res = read_json(out / "compare" / "results.json")
    shifts = {"in-domain", "phrasing", "third-party", "cross-family", "orthogonal"}
    assert {r["label"] for r in res["rows"]} >= {"dpo", "rank"}
    assert all(r["seeds"] == 2 for r in res["rows"] if r["label"] in ("dpo", "rank"))
    assert shifts <= set(res["shifts"])
    assert "chosen: dpo" in capsys.readouterr().out
    table = (out / "study.md").read_text().splitlines()
    assert table[0] == "| method (chosen on validation) | " + " | ".join(
        s for s in res["shifts"] if s != "train") + " |"
    assert any(ln.startswith("| base (adapter off) |") for ln in table)
    dpo = next(ln for ln in table if ln.startswith("| dpo ("))
    assert dpo.count("vs base") == len(shifts)  # DPO's gain over the base on every shift
    rank = next(ln for ln in table if ln.startswith("| rank ("))
    assert rank.count(" p ") == len(shifts)  # the difference from DPO, with its p-value
