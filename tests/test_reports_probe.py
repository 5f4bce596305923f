"""The probe page rendered in Chromium: best accuracy, model, data and sites visible; the
table's star explained, headers whole, one precision per column; the console marks the best
row and says what the mark means."""

from __future__ import annotations

import json
import re

import pytest
from conftest import save_tiny
from report_dom import assert_shows, dump_dom

from reprlab.cli import main


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe-page")
    model = save_tiny(base / "tiny", hidden=32, layers=2)
    rows = [{"text": f"What a {w} {n} it was.", "label": lab}
            for n in ("day", "meal", "film", "trip", "book", "song", "walk", "view")
            for w, lab in (("good", "pos"), ("lovely", "pos"), ("awful", "neg"), ("grim", "neg"))]
    data = base / "moods.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = base / "run"
    return model, data, out


def test_probe_page_and_console(probe_run, capsys):
    model, data, out = probe_run
    rc = main(["probe", "--model", str(model), "--data", str(data), "--sites", "layers.*",
               "--positions", "mean", "--probes", "logistic,mass-mean", "--out", str(out),
               "--bootstrap", "50", "--eval", str(data), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    best = res["best"]
    assert re.search(r" \*$", printed, re.M) and "* best:" in printed
    assert f"eval {data.stem}" in printed          # the eval column header is whole
    man = json.loads((out / "manifest.json").read_text())
    text = assert_shows(out / "report.html", f"{best['test_acc']:.3f}", man["inputs"]["model"]["name"],
                        str(data), "layers.0", "layers.1", f"{best['site']} *",
                        f"* best: {best['site']} / {best['position']} / {best['family']}, chosen on validation accuracy",
                        "cos(probe, mean diff)")
    assert "None" not in text
    # every number in the results table has three decimals
    dom = dump_dom(out / "report.html")
    table = dom[dom.index("Per-layer results"):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<td>([^<]*)</td>", table)
    numbers = [c for c in cells if re.fullmatch(r"[+-]?\d+\.\d+(–\d+\.\d+)?", c)]
    assert numbers and all(re.fullmatch(r"[+-]?\d\.\d{3}(–\d\.\d{3})?", c) for c in numbers)
