"""Run directories of the training commands (prefs, tuned and talkative lenses, sweeps): a
finished run is never destroyed or relabelled, one writer at a time, NaN and infinity refused,
a diverging run stops without a completion mark. Each case: exit code, one line on stderr, and
the directory afterwards (the finished run still reads as finished and still evaluates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprlab.cli import main
from reprlab.io import read_json
from reprlab.report.rundir import is_complete

PREFS = ["--limit", "8", "--steps", "2", "--batch-size", "2", "--ref-cache", "off",
         "--no-progress"]
TUNED = ["--limit", "20", "--steps", "2", "--tokens-per-step", "64", "--no-progress"]
TALK = ["--limit", "24", "--site", "layers.0", "--tokens", "2", "--steps", "2", "--batch-size",
        "4", "--eval-rows", "4", "--best-of", "1", "--no-progress"]


def one_line(capsys, argv: list[str], expected: str) -> str:
    """Run ``argv``; it must exit 2 with one ``error:`` line holding ``expected``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(
        ("WARNING", "INFO", "  warnings.warn")) and "Warning: " not in ln]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    return lines[0]


def finished(path: Path, workflow: str) -> dict:
    """The manifest of the finished ``workflow`` run in ``path`` (asserts it is one)."""
    assert is_complete(path), sorted(os.listdir(path))
    manifest = read_json(path / "manifest.json")
    assert manifest["workflow"] == workflow
    return manifest


@pytest.fixture(scope="module")
def runs(toy_mini, tmp_path_factory):
    """One finished run of each training workflow on the mini toy."""
    root = tmp_path_factory.mktemp("runs")
    base, sft = str(toy_mini.base), str(toy_mini.sft)
    p = {"base": base, "sft": sft, "root": root}
    for name, argv in (("prefs", ["prefs", "train", "--model", sft, *PREFS]),
                       ("tuned", ["lens", "tuned", "train", "--model", base, *TUNED]),
                       ("talk", ["lens", "talk", "train", "--model", base, *TALK])):
        assert main([*argv, "--out", str(root / name)]) == 0
        p[name] = root / name
    return p


def _snapshot(path: Path) -> dict[str, float]:
    return {f.name: f.stat().st_mtime_ns for f in path.iterdir() if not f.name.startswith(".")}


@pytest.mark.parametrize("name,argv,expected", [
    ("compare --out a prefs run", ["prefs", "compare", "{prefs}", "--out", "{prefs}",
                                    "--no-train", "--no-progress"], "holds a finished prefs-train"),
    ("tuned eval --out its run", ["lens", "tuned", "eval", "{tuned}", "--out", "{tuned}",
                                  "--no-progress"], "holds a finished lens-tuned run"),
    ("prefs train into a tuned run", ["prefs", "train", "--model", "{sft}", *PREFS, "--out",
                                      "{tuned}"], "holds a finished lens-tuned run"),
    ("tuned train into a prefs run", ["lens", "tuned", "train", "--model", "{base}", *TUNED,
                                      "--out", "{prefs}"], "holds a finished prefs-train run"),
    ("talk train into a tuned run", ["lens", "talk", "train", "--model", "{base}", *TALK,
                                     "--out", "{tuned}"], "holds a finished lens-tuned run"),
    ("tuned train, other --lr", ["lens", "tuned", "train", "--model", "{base}", *TUNED, "--lr",
                                 "0.5", "--out", "{tuned}"], "with different settings (lr None -> 0.5"),
    ("tuned train, other optimizer", ["lens", "tuned", "train", "--model", "{base}", *TUNED,
                                      "--optimizer", "adam", "--out", "{tuned}"],
     "optimizer 'sgd' -> 'adam'"),
    ("tuned train, other model", ["lens", "tuned", "train", "--model", "{sft}", *TUNED, "--out",
                                  "{tuned}"], "model_weights"),
    ("talk train, other steps", ["lens", "talk", "train", "--model", "{base}", *TALK[:-3],
                                 "--best-of", "1", "--steps", "3", "--no-progress", "--out",
                                 "{talk}"], "steps 2 -> 3"),
    ("prefs train, other lr", ["prefs", "train", "--model", "{sft}", *PREFS, "--lr", "1e-3",
                               "--out", "{prefs}"], "lr 0.0005 -> 0.001"),
])
def test_a_finished_run_is_never_replaced(runs, capsys, name, argv, expected):
    args = [a.format(**runs) for a in argv]
    target = Path(args[args.index("--out") + 1])
    workflow = read_json(target / "manifest.json")["workflow"]
    before = _snapshot(target)
    one_line(capsys, args, expected)
    finished(target, workflow)
    assert _snapshot(target) == before  # nothing touched, nothing deleted


def test_the_kept_runs_still_evaluate(runs, capsys, tmp_path):
    """After every refusal above, each run still works with its own commands."""
    assert main(["lens", "tuned", "eval", str(runs["tuned"]), "--no-progress", "--out",
                 str(tmp_path / "ev")]) == 0
    finished(tmp_path / "ev", "lens-tuned-eval")
    assert main(["prefs", "eval", str(runs["prefs"]), "--limit", "4", "--generate", "0",
                 "--no-progress", "--data", "x=builtin:toy-prefs"]) == 0
    finished(runs["prefs"], "prefs-train")
    # the same settings again redo (or resume) the run in place
    assert main(["lens", "tuned", "train", "--model", runs["base"], *TUNED, "--out",
                 str(runs["tuned"])]) == 0
    finished(runs["tuned"], "lens-tuned")


def test_sweep_into_a_run_is_refused(runs, capsys, tmp_path):
    pytest.importorskip("optuna")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"command: prefs train --model {runs['sft']} --limit 8 --steps 1 "
                    "--ref-cache off --no-progress\nmetric: {name: final.loss, goal: minimize}\n"
                    "method: grid\nparameters: {lr: {values: [0.001]}}\n")
    before = _snapshot(runs["prefs"])
    one_line(capsys, ["sweep", str(spec), "--out", str(runs["prefs"])],
             "holds a finished prefs-train run")
    assert _snapshot(runs["prefs"]) == before
    (tmp_path / "file").write_text("x")
    one_line(capsys, ["sweep", str(spec), "--out", str(tmp_path / "file")], "is a file")


NAN_CASES = [
    ("prefs --lr inf", ["prefs", "train", "--model", "{sft}", "--lr", "inf"], "--lr"),
    ("prefs --beta nan", ["prefs", "train", "--model", "{sft}", "--beta", "nan"], "--beta"),
    ("prefs --nll-weight nan", ["prefs", "train", "--model", "{sft}", "--nll-weight", "nan"],
     "--nll-weight"),
    ("tuned --lr nan", ["lens", "tuned", "train", "--model", "{base}", "--lr", "nan"], "--lr"),
    ("tuned --lr inf", ["lens", "tuned", "train", "--model", "{base}", "--lr", "inf"], "--lr"),
    ("tuned --weight-decay nan", ["lens", "tuned", "train", "--model", "{base}",
                                  "--weight-decay", "nan"], "--weight-decay"),
    ("talk --proj-lr inf", ["lens", "talk", "train", "--model", "{base}", "--proj-lr", "inf"],
     "--proj-lr"),
    ("talk --w-kl nan", ["lens", "talk", "train", "--model", "{base}", "--w-kl", "nan"],
     "--w-kl"),
    ("eval --threshold nan", ["prefs", "eval", "{prefs}", "--threshold", "nan"],
     "--threshold must be a finite number"),
]


@pytest.mark.parametrize("name,argv,flag", NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_non_finite_numbers_are_refused(runs, capsys, tmp_path, name, argv, flag):
    out = tmp_path / "out"
    args = [a.format(**runs) for a in argv] + ["--out", str(out)]
    line = one_line(capsys, args, flag)
    assert "finite" in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("argv", [
    ["prefs", "train", "--model", "{sft}", *PREFS[:2], "--steps", "3", "--batch-size", "2",
     "--ref-cache", "off", "--no-progress", "--lr", "1e30", "--max-grad-norm", "1e30"],
    ["lens", "tuned", "train", "--model", "{base}", *TUNED[:2], "--steps", "3",
     "--tokens-per-step", "64", "--no-progress", "--lr", "1e30"],
], ids=["prefs", "tuned"])
def test_a_diverging_run_stops_without_a_completion_mark(runs, capsys, tmp_path, argv):
    out = tmp_path / "div"
    one_line(capsys, [a.format(**runs) for a in argv] + ["--out", str(out)], "diverged")
    assert not is_complete(out) and not (out / "manifest.json").exists()
    assert not list(out.glob("*lens.safetensors")) and not (out / "adapter").exists()


def test_two_writers_of_one_run_directory(runs, capsys, tmp_path):
    """A second `prefs train` into the --out that a running one writes stops with one line
    naming the first; the first finishes as if alone."""
    out = tmp_path / "both"
    argv = ["prefs", "train", "--model", runs["sft"], "--limit", "8", "--steps", "400",
            "--batch-size", "1", "--ref-cache", "off", "--save-every", "1000", "--no-progress",
            "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"),
               OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "reprlab", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "train_log.jsonl").exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        line = one_line(capsys, argv, "is in use by pid")
        assert str(first.pid) in line
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert not is_complete(out)
    lock = json.loads((out / ".lock").read_text() or "{}")
    assert lock == {} or lock.get("pid") != os.getpid()


def test_sigterm_stops_a_run_like_ctrl_c(runs, tmp_path):
    """SIGTERM (SLURM, Docker, systemd): one line, exit 130, the saved steps kept, no
    completion mark, the directory free for the rerun that resumes it."""
    import signal

    from reprlab.lock import dir_lock
    from reprlab.trainstate import read_train_state

    out = tmp_path / "term"
    argv = ["prefs", "train", "--model", runs["sft"], "--limit", "8", "--steps", "400",
            "--batch-size", "1", "--ref-cache", "off", "--save-every", "2", "--no-progress",
            "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "reprlab", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "state.safetensors").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err
    assert lines == ["interrupted; run the same command again to resume"], err
    assert not is_complete(out)
    assert read_train_state(out / "state.safetensors")[1]["info"]["step"] >= 2
    with dir_lock(out):  # released by the stopped process
        pass


@pytest.fixture(scope="module")
def broken(runs):
    """Copies of the finished runs with a cut weights file, and bad text files."""
    import shutil

    root = runs["root"] / "broken"
    root.mkdir()
    p = dict(runs)
    for name, rel in (("tuned", "lens.safetensors"), ("talk", "lens.safetensors"),
                      ("prefs", "adapter/adapter_model.safetensors")):
        d = root / name
        shutil.copytree(runs[name], d)
        (d / rel).open("r+b").truncate(200)
        p[f"cut_{name}"] = str(d)
    (root / "one.txt").write_text("Just one text here.\n")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\nun autre\n".encode("latin-1"))
    p.update(one=str(root / "one.txt"), latin1=str(root / "latin1.txt"),
             missing=str(root / "nope"))
    return p


ONE_LINE = [
    ("tuned eval, cut lens", ["lens", "tuned", "eval", "{cut_tuned}"], "corrupt or truncated"),
    ("talk explain, cut lens", ["lens", "talk", "explain", "{cut_talk}", "--text", "hi"],
     "corrupt or truncated"),
    ("prefs eval, cut adapter", ["prefs", "eval", "{cut_prefs}", "--generate", "0"],
     "unreadable"),
    ("prefs eval --batch-size 0", ["prefs", "eval", "{prefs}", "--batch-size", "0"],
     "--batch-size must be at least 1"),
    ("prefs eval --generate -1", ["prefs", "eval", "{prefs}", "--generate", "-1"],
     "--generate 0 or more"),
    ("prefs eval, no such run", ["prefs", "eval", "{missing}"], "no such directory"),
    ("tuned train, one text", ["lens", "tuned", "train", "--model", "{base}", "--data", "{one}",
                               "--out", "{missing}"], "needs at least 2"),
    ("tuned train, latin-1 text", ["lens", "tuned", "train", "--model", "{base}", "--data",
                                   "{latin1}", "--out", "{missing}"], "not UTF-8"),
    ("talk explain of a tuned run", ["lens", "talk", "explain", "{tuned}", "--text", "hi"],
     "read it with `reprlab lens tuned eval"),
    ("talk eval of a tuned run", ["lens", "talk", "eval", "{tuned}"],
     "read it with `reprlab lens tuned eval"),
    ("tuned eval of a talk run", ["lens", "tuned", "eval", "{talk}"],
     "read it with `reprlab lens talk explain"),
    ("tuned eval of a prefs run", ["lens", "tuned", "eval", "{prefs}"],
     "holds a prefs-train run, not a lens-tuned run"),
    # lengths and counts
    ("logit --position out of range", ["lens", "logit", "--model", "{base}", "--text", "hi",
                                       "--position", "99"], "--position 99 is out of range"),
    ("explain --position out of range", ["lens", "talk", "explain", "{talk}", "--text", "hi",
                                         "--position", "-50"], "--position -50 is out of range"),
    ("talk train --position 500", ["lens", "talk", "train", "--model", "{base}", "--site",
                                   "layers.0", "--position", "500", "--out", "{missing}"],
     "--position 500 is outside"),
    ("talk --tokens 33", ["lens", "talk", "train", "--model", "{base}", "--tokens", "33",
                          "--out", "{missing}"], "use 1-32"),
    ("talk --best-of 1e8", ["lens", "talk", "train", "--model", "{base}", "--best-of",
                            "100000000", "--out", "{missing}"], "more than the limit"),
    ("explain --best-of 1e8", ["lens", "talk", "explain", "{talk}", "--text", "hi",
                               "--best-of", "100000000"], "more than the limit"),
    ("talk --eval-rows 0", ["lens", "talk", "train", "--model", "{base}", "--eval-rows", "0",
                            "--out", "{missing}"], "--eval-rows must be at least 1"),
    # models and paths of the wrong kind
    ("tuned train of an encoder", ["lens", "tuned", "train", "--model", "minilm", "--out",
                                   "{missing}"], "has no language-model head"),
    ("prefs train --ref-cache FILE", ["prefs", "train", "--model", "{sft}", "--ref-cache",
                                      "{one}", "--steps", "1", "--out", "{missing}"],
     "--ref-cache {one} is a file"),
    ("talk train, latin-1 text", ["lens", "talk", "train", "--model", "{base}", "--data",
                                  "{latin1}", "--site", "layers.0", "--out", "{missing}"],
     "not UTF-8"),
    ("logit --tuned, cut lens", ["lens", "logit", "--model", "{base}", "--text", "hi",
                                 "--tuned", "{cut_tuned}"], "corrupt or truncated"),
]


@pytest.mark.parametrize("name,argv,expected", ONE_LINE, ids=[c[0] for c in ONE_LINE])
def test_one_line_not_a_traceback(broken, capsys, name, argv, expected):
    one_line(capsys, [a.format(**broken) for a in argv], expected.format(**broken))
    assert not Path(broken["missing"]).exists()


def test_max_length_is_clamped_to_the_model(runs, caplog, tmp_path):
    """--max-length beyond the model's positions trains on texts cut to those positions."""
    import logging

    from reprlab.models import load_model

    limit = load_model(runs["sft"]).position_limit
    with caplog.at_level(logging.WARNING):
        assert main(["prefs", "train", "--model", runs["sft"], *PREFS[:2], "--steps", "1",
                     "--batch-size", "2", "--ref-cache", "off", "--no-progress", "--max-length",
                     "100000000", "--out", str(tmp_path / "p")]) == 0
        assert main(["lens", "tuned", "train", "--model", runs["base"], *TUNED, "--max-length",
                     "100000000", "--out", str(tmp_path / "t")]) == 0
    said = [r.getMessage() for r in caplog.records if "100000000" in r.getMessage()]
    assert said and f"truncated to {limit} tokens" in said[0]
    finished(tmp_path / "p", "prefs-train")
    finished(tmp_path / "t", "lens-tuned")


def test_run_directories_do_not_carry_the_cache_path(toy_mini, tmp_path, monkeypatch):
    """A model under $REPRLAB_HOME is recorded as $REPRLAB_HOME/..., and read back."""
    monkeypatch.setenv("REPRLAB_HOME", str(toy_mini.home))
    out = tmp_path / "p"
    assert main(["prefs", "train", "--model", str(toy_mini.sft), *PREFS, "--out", str(out)]) == 0
    home = str(Path(toy_mini.home).resolve())
    for name in ("manifest.json", "results.json", "adapter/adapter_config.json"):
        text = (out / name).read_text()
        assert home not in text, name
    assert read_json(out / "manifest.json")["inputs"]["model"]["spec"].startswith("$REPRLAB_HOME/")
    assert main(["prefs", "eval", str(out), "--limit", "4", "--generate", "0", "--no-progress",
                 "--data", "x=builtin:toy-prefs"]) == 0


def test_a_site_typo_is_refused_before_any_build(tmp_path, capsys, monkeypatch):
    """Before the toy is built (minutes), not after, and with the right explanation."""
    monkeypatch.setenv("REPRLAB_HOME", str(tmp_path / "home"))
    one_line(capsys, ["prefs", "train", "--model", "toy-sft", "--method", "innerdpo",
                      "--method-options", "sites=layrs.3", "--out", str(tmp_path / "o")],
             "unknown site 'layrs.3'; sites are embed, layers.N")
    assert not (tmp_path / "home").exists() and not (tmp_path / "o").exists()


def test_innerdpo_default_sites_resolve_from_the_cli(runs, tmp_path):
    """The default site spec (layers.0.5:-1) is resolved on the model, as the Python API does."""
    out = tmp_path / "inner"
    assert main(["prefs", "train", "--model", runs["sft"], "--method", "innerdpo", *PREFS,
                 "--out", str(out)]) == 0
    results = read_json(out / "results.json")
    assert results["method"]["site_spec"] == "layers.0.5:-1"
    assert results["method"]["sites"], results["method"]
