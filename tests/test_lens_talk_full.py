"""The talkative lens's bars on the full toy (slow; ``toy_full`` builds the model): the default
``nla`` run at ``layers.-2`` with t = 4 on ``builtin:toy-text``, judged on held-out samples
against its baselines (docs/talk-lens.md, "Which bars are met")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import toy_env

pytestmark = pytest.mark.slow

# measured on the seed-0 build (docs/talk-lens.md)
ECHO_REASON = ("the default lens reaches FVE 0.869 and the context echo, its encoder trained "
               "6 epochs, 0.95: the activation is mostly its last four tokens, which the echo "
               "is handed and the lens must rebuild from the activation")
LANDMARK_REASON = ("the explanation names the right city or country on 1 of 80 held-out "
                   "landmark prompts; the model's own next token does on 22")


@pytest.fixture(scope="module")
def talk_run(toy_full, tmp_path_factory):
    out = tmp_path_factory.mktemp("talk-full")
    for args in (["tuned", "train", "--model", "toy", "--out", str(out / "tuned"), "--steps",
                  "30"],
                 ["talk", "train", "--model", "toy", "--site", "layers.-2", "--tokens", "4",
                  "--recipe", "nla", "--tuned", str(out / "tuned"), "--out", str(out / "nla")]):
        proc = subprocess.run([sys.executable, "-m", "reprlab", "lens", *args, "--no-progress"],
                              env=toy_env(toy_full.home), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "nla" / "results.json").read_text())


def test_lens_beats_the_lookup_and_its_own_ablations(talk_run):
    m = talk_run["metrics"]
    assert m["fve_minus_lookup_ci"][0] > 0, m  # paired interval above the current token
    assert m["fve_shuffled"] <= m["fve"] - 0.2 and m["fve_empty"] <= m["fve"] - 0.2, m
    # the report holds one held-out curve point per epoch (8 warm start + 3 GRPO)
    assert len(talk_run["curves"]) == 11


@pytest.mark.xfail(strict=False, reason=ECHO_REASON)
def test_lens_at_least_the_context_echo(talk_run):
    m = talk_run["metrics"]
    assert m["fve_minus_context_echo_ci"][1] >= 0, m


def test_landmark_check_reports_what_the_model_itself_says(talk_run):
    lmk = talk_run["landmarks"]
    assert lmk["n"] == 80 and 15 <= lmk["n_model"] <= 30, lmk["n_model"]
    assert lmk["n_model"] == sum(r["model_names_it"] for r in lmk["rows"])


@pytest.mark.xfail(strict=False, reason=LANDMARK_REASON)
def test_landmarks_named(talk_run):
    assert talk_run["landmarks"]["share"] >= 0.5
