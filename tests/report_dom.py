"""Render a report page in headless Chromium and return the text a reader sees.

The page is loaded by Debian's ``chromium`` (``tests/tools/ensure_chromium.sh`` installs it;
CI runs that script). ``--dump-dom`` gives the DOM after load; the visible text is everything
outside ``<style>``, ``<script>``, ``<head>`` and the collapsed ``<details>`` (the manifest), so a
number that only sits in the manifest does not count as shown. Without chromium the tests
skip with the reason, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _need() -> str:
    exe = chromium()
    if exe is None:
        msg = "chromium is not installed (run tests/tools/ensure_chromium.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _args(exe: str, profile: str) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={profile}", "--allow-file-access-from-files"]


def dump_dom(page: Path, timeout: float = 120) -> str:
    """The DOM of ``page`` after Chromium loaded it."""
    exe = _need()
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([*_args(exe, profile), "--dump-dom", Path(page).resolve().as_uri()],
                             capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0 or "<body" not in out.stdout:
        raise AssertionError(f"chromium could not render {page}: {out.stderr[-500:]}")
    return out.stdout


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000) -> Path:
    """A PNG of ``page`` (for looking at layouts by eye)."""
    exe = _need()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*_args(exe, profile), "--hide-scrollbars",
                        f"--window-size={width},{height}", f"--screenshot={png}",
                        Path(page).resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    return png


class _Visible(html.parser.HTMLParser):
    HIDDEN = {"style", "script", "head", "details", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []
        self.alts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.depth += 1
        if tag == "img" and self.depth == 0:
            self.alts.extend(v for k, v in attrs if k == "alt" and v)

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth == 0 and data.strip():
            self.parts.append(data.strip())


def visible_text(page: Path) -> str:
    """The text a reader sees on ``page`` rendered by Chromium (one line per text node)."""
    p = _Visible()
    p.feed(dump_dom(page))
    return "\n".join(p.parts)


def assert_shows(page: Path, *needles: str) -> str:
    """Render ``page`` and check that every needle is visible text; returns the text."""
    text = visible_text(page)
    flat = " ".join(text.split())
    missing = [n for n in needles if " ".join(str(n).split()) not in flat]
    assert not missing, f"not visible on {page}: {missing}\n--- visible text ---\n{text[:3000]}"
    return text


def overflow_px(page: Path, width: int = 1000) -> int:
    """How many pixels ``page`` is wider than a ``width``-pixel window (0: no sideways scroll)."""
    exe = _need()
    src = Path(page).read_text(encoding="utf-8")
    probe = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-over',"
             "String(document.documentElement.scrollWidth-window.innerWidth));});</script>")
    with tempfile.TemporaryDirectory() as profile:
        copy = Path(profile) / "page.html"
        copy.write_text(src.replace("</body>", probe + "</body>"), encoding="utf-8")
        out = subprocess.run([*_args(exe, profile), f"--window-size={width},900",
                              "--dump-dom", copy.as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r'data-over="(-?\d+)"', out.stdout)
    if m is None:
        raise AssertionError(f"chromium could not measure {page}: {out.stderr[-500:]}")
    return int(m.group(1))
