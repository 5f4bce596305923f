"""Help text: negated flags say what they turn off; docstrings lose their RST markup."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reprlab.cliutil import add_dataclass, negated, opt, plain


@dataclass
class _Cmd:
    resume: bool = opt(True, help="resume an interrupted run in --out")
    progress: bool = opt(True, help="progress bars")
    overwrite: bool = opt(False, help="replace what is there")


def test_flags_on_by_default_are_described_as_turning_off():
    parser = argparse.ArgumentParser()
    add_dataclass(parser, _Cmd)
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    assert helps["--no-resume"] == ("resume an interrupted run in --out (on by default; this "
                                    "flag turns it off)")
    assert helps["--no-progress"].endswith("(on by default; this flag turns it off)")
    assert helps["--overwrite"] == "replace what is there"
    assert parser.parse_args(["--no-resume"]).resume is False
    assert parser.parse_args([]).resume is True
    assert negated("") and negated("x") != "x"


def test_drift_train_help_for_no_resume_and_no_progress(capsys):
    from reprlab.cli import main

    try:
        main(["drift", "train", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-resume resume an interrupted run in --out (on by default; this flag turns it " \
        "off)" in text
    assert "--no-progress progress bars (on by default; this flag turns it off)" in text


def test_plain_strips_rst_markup():
    assert plain("``reprlab steer``: see :mod:`~reprlab.drift.ot` and :func:`x.y`") == \
        "reprlab steer: see reprlab.drift.ot and x.y"
    assert plain(None) == ""


def test_steer_help_starts_with_plain_words(capsys):
    from reprlab.cli import main

    try:
        main(["steer", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.startswith("reprlab steer: fit")


def test_commands_that_are_not_data_parallel_refuse_to_run_under_a_launcher(
        monkeypatch, tmp_path, capsys):
    """Under torchrun's WORLD_SIZE a one-process command exits with one line and writes
    nothing; the data-parallel ones are marked as such and get past the check."""
    from reprlab.cli import DATA_PARALLEL, build_parser, main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    assert main(["probe", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "launcher started 2" in err and "prefs train" in err
    assert not out.exists()
    marked = {words for words, parser in _leaves(build_parser())
              if parser._defaults.get("_data_parallel")}
    assert marked == set(DATA_PARALLEL)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["probe", "--data", "builtin:nonexistent", "--out", str(out)]) == 2
    assert "launcher" not in capsys.readouterr().err


def _leaves(parser: argparse.ArgumentParser, words: str = ""):
    """(command words, parser) of every runnable subcommand under ``parser``."""
    if "_handler" in parser._defaults:
        yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, f"{words} {name}".strip())
