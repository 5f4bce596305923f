from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from reprlab.cliutil import opt, split_list, subcommand
from reprlab.errors import ConfigError


@dataclass
class Demo:
    """Demo command."""

    name: str = opt("x", help="a name")
    count: int | None = opt(None, help="optional count")
    ratio: float = opt(0.5, help="a ratio")
    items: list[str] = opt(factory=lambda: ["a", "b"], help="items")
    flag: bool = opt(False, help="a flag")
    on: bool = opt(True, help="on by default")

    def __post_init__(self) -> None:
        if self.ratio < 0:
            raise ConfigError("--ratio must be >= 0")


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    seen = {}
    subcommand(sub, "demo", Demo, lambda cfg: seen.setdefault("cfg", cfg), help="demo")
    ns = parser.parse_args(["demo", *argv])
    ns._handler(ns)
    return seen["cfg"]


def test_types_from_dataclass():
    cfg = _parse(["--count", "3", "--ratio", "2", "--items", "p, q", "--flag", "--no-on"])
    assert cfg.count == 3 and isinstance(cfg.count, int)
    assert cfg.ratio == 2.0 and cfg.items == ["p", "q"] and cfg.flag and not cfg.on
    default = _parse([])
    assert default.count is None and default.items == ["a", "b"] and default.on
    with pytest.raises(ConfigError):
        _parse(["--ratio", "-1"])
    with pytest.raises(SystemExit):
        _parse(["--count", "three"])
    assert split_list(["a,b", "c"]) == ["a", "b", "c"]


def test_values_with_a_leading_minus_reach_their_option():
    from reprlab.cli import join_negative_values

    assert join_negative_values(["steer", "generate", "--coeffs", "-4,0,4", "--pos", "-1",
                                 "--site", "layers.-1", "--x=-2", "--flag", "--out", "o"]) == [
        "steer", "generate", "--coeffs=-4,0,4", "--pos=-1", "--site", "layers.-1", "--x=-2",
        "--flag", "--out", "o"]
    assert join_negative_values(["--coeffs", "-.5:.5:3"]) == ["--coeffs=-.5:.5:3"]
