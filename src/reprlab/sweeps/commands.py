"""A trial's command line: the sweep's ``command`` plus one ``--option value`` per parameter,
checked against the subcommand's own argument parser before any trial starts."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
from typing import Any

from reprlab.errors import ConfigError
from reprlab.sweeps.spec import Param, SweepSpec


def subcommand_parser(command: tuple[str, ...]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of the (possibly nested) subcommand that ``command`` starts with, and the
    words that name it (``["prefs", "train"]``)."""
    from reprlab.cli import build_parser

    parser = build_parser(command[0] if command else None)
    words: list[str] = []
    for word in command:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                   None)
        if sub is None or word not in sub.choices:
            break
        parser = sub.choices[word]
        words.append(word)
    if not words:
        from reprlab.cli import COMMANDS

        raise ConfigError(f"command {' '.join(command)!r} does not start with a reprlab "
                          f"subcommand; use one of {', '.join(COMMANDS)}")
    if words[0] == "sweep":
        raise ConfigError("a sweep cannot sweep `reprlab sweep`; name a workflow, e.g. probe")
    return parser, words


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return dict(parser._option_string_actions)


def check_params(spec: SweepSpec) -> argparse.ArgumentParser:
    """Every parameter must be an option of the command, and the command must not fix
    ``--out`` (each trial writes its own run directory)."""
    parser, words = subcommand_parser(spec.command)
    opts = _options(parser)
    if "--out" not in opts:
        raise ConfigError(f"`reprlab {' '.join(words)}` has no --out; a sweep needs a command "
                          "that writes a run directory")
    if any(w == "--out" or w.startswith("--out=") for w in spec.command):
        raise ConfigError("leave --out out of the sweep's command; each trial writes its run "
                          "directory under the sweep's trials/")
    for p in spec.params:
        if p.flag in opts or "--no-" + p.flag[2:] in opts:
            continue
        names = sorted(o for o in opts if o.startswith("--") and o != "--help")
        close = difflib.get_close_matches(p.flag, names, n=1)
        hint = f" (did you mean {close[0][2:].replace('-', '_')}?)" if close else ""
        raise ConfigError(f"parameter {p.name!r} is not an option of `reprlab "
                          f"{' '.join(words)}`{hint}; see `reprlab {' '.join(words)} --help`")
    return parser


def option_args(parser: argparse.ArgumentParser, params: dict[str, Any],
                specs: dict[str, Param]) -> list[str]:
    """``{"l2": 0.1, "no_controls": True}`` -> ``["--l2=0.1", "--no-controls"]``."""
    opts = _options(parser)
    out: list[str] = []
    for name, value in params.items():
        flag = specs[name].flag
        action = opts.get(flag)
        neg = opts.get("--no-" + flag[2:])
        if isinstance(value, bool) or (action is None and neg is not None):
            truthy = value if isinstance(value, bool) else str(value).lower() in ("1", "true")
            if action is not None and isinstance(action, argparse._StoreTrueAction):
                out += [flag] if truthy else []
            elif neg is not None:
                out += [] if truthy else ["--no-" + flag[2:]]
            else:
                out.append(f"{flag}={'true' if truthy else 'false'}")
            continue
        out.append(f"{flag}={_text(value)}")
    return out


def _text(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def trial_argv(spec: SweepSpec, parser: argparse.ArgumentParser, params: dict[str, Any],
               out: str) -> list[str]:
    """The full argv of one trial (what ``reprlab.cli.main`` receives)."""
    specs = {p.name: p for p in spec.params}
    values = {**spec.constants(), **params}
    return [*spec.command, *option_args(parser, values, specs), f"--out={out}"]


def validate_argv(argv: list[str], parser: argparse.ArgumentParser | None = None) -> None:
    """Parse ``argv`` as the CLI would and run the subcommand's config checks, without
    running it; raises :class:`ConfigError` with argparse's or the config's one line.
    ``parser``: the full ``reprlab`` parser, to reuse across many calls."""
    from reprlab.cli import build_parser, join_negative_values

    parser = parser or build_parser(argv[0] if argv else None)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(join_negative_values(argv))
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        msg = lines[-1] if lines else "invalid command line"
        msg = msg.split("error: ", 1)[-1]
        raise ConfigError(f"trial command `reprlab {' '.join(argv)}` is invalid: {msg}") from None
    handler = getattr(ns, "_handler", None)
    cls = _config_class(handler)
    if cls is not None:
        from reprlab.cliutil import build

        try:
            build(cls, ns)
        except ConfigError as exc:
            raise ConfigError(f"trial command `reprlab {' '.join(argv)}` is invalid: "
                              f"{exc}") from None


def _config_class(handler: Any) -> type | None:
    """The dataclass a :func:`reprlab.cliutil.subcommand` handler builds (from its closure)."""
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            return value
    return None


def sample_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Parameter settings that cover the search space's corners, to validate before running:
    every grid point, or each distribution's low and high end with every categorical value."""
    if spec.method == "grid":
        return spec.grid()
    points: list[dict[str, Any]] = []
    for end in (0, 1):
        pt: dict[str, Any] = {}
        for p in spec.searched:
            if p.kind == "categorical":
                pt[p.name] = p.values[min(end, len(p.values) - 1)]
            else:
                v = p.low if end == 0 else p.high
                pt[p.name] = int(v) if p.kind == "int" else v
        points.append(pt)
    for p in spec.searched:
        if p.kind == "categorical":
            for v in p.values[2:]:
                points.append({**points[0], p.name: v})
    return points


__all__ = ["check_params", "option_args", "sample_points", "subcommand_parser", "trial_argv",
           "validate_argv"]
