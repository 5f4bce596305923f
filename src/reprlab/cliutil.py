"""Build argparse subcommands from dataclasses.

A subcommand is a dataclass; each field becomes ``--field-name``. The help text comes from
``field(metadata={"help": ...})``. Types: ``str``, ``int``, ``float``, ``bool`` (a flag, or
``--no-x`` when it defaults to True), ``list[str]`` (comma-separated), optional variants.
Validation lives in the dataclass ``__post_init__``, which raises :class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.errors import ConfigError


def opt(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
        factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with help text (and optionally positional on the command line)."""
    meta = {"help": help, "positional": positional}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def split_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"a,b , c"`` -> ``["a", "b", "c"]``; lists pass through."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for v in value:
            out.extend(split_list(v))
        return out
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _base_type(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])[0], True
    return tp, False


def add_dataclass(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        tp, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.metadata.get("positional"):
            kwargs: dict[str, Any] = {"help": help_text}
            if not required:
                kwargs["nargs"] = "?"
                kwargs["default"] = default
            parser.add_argument(f.name, **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            if default:
                # the help text says what the option does when on; this flag turns it off
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                                    action="store_false", help=negated(help_text))
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        origin = typing.get_origin(tp)
        if origin in (list, tuple):
            shown = ",".join(map(str, default)) if default else None
            parser.add_argument(flag, dest=f.name, default=default, required=required,
                                help=help_text + (f" (default: {shown})" if shown else ""),
                                metavar="A,B")
            continue
        caster = tp if tp in (int, float, str) else str
        parser.add_argument(flag, dest=f.name, default=default, required=required,
                            type=_caster(caster, flag),
                            help=help_text + (f" (default: {default})" if default not in (None, "") else ""))


def negated(help_text: str) -> str:
    """Help for ``--no-x`` from the help of option ``x`` (which is on by default)."""
    if not help_text:
        return "turn off what is on by default"
    return f"{help_text} (on by default; this flag turns it off)"


_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str:
    """A docstring as terminal text: ``literal`` and :role:`~a.b` markup become plain words."""
    text = _RST_ROLE.sub(lambda m: m.group(1), text or "")
    return _RST_LITERAL.sub(lambda m: m.group(1), text).strip()


def _caster(tp: type, flag: str) -> Callable[[str], Any]:
    def cast(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs a {tp.__name__}, got {text!r}") from None
    return cast


def build(cls: type, ns: argparse.Namespace) -> Any:
    """Instantiate ``cls`` from parsed args (lists split on commas)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        tp, _ = _base_type(hints[f.name])
        if typing.get_origin(tp) in (list, tuple) and value is not None:
            value = split_list(value)
        kwargs[f.name] = value
    check_finite(kwargs)  # before __post_init__'s range checks, which NaN would pass
    return cls(**kwargs)


def check_finite(values: dict[str, Any]) -> None:
    """:class:`ConfigError` naming the first float in ``values`` (option name -> value) that
    is NaN or infinite. Every subcommand's options pass here (:func:`build`), and the
    configurations of the Python API through :func:`finite_fields`."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def finite_fields(obj: Any) -> None:
    """:func:`check_finite` over the fields of the dataclass ``obj``."""
    check_finite({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def subcommand(sub: argparse._SubParsersAction, name: str, cls: type,
               run: Callable[[Any], int | None], help: str,
               data_parallel: bool = False) -> argparse.ArgumentParser:
    """Register ``name`` whose arguments come from ``cls`` and which calls ``run(config)``.
    ``data_parallel``: the command shares its work among the processes of ``torchrun`` or
    ``accelerate launch``; the others refuse to run under them (:mod:`reprlab.cli`)."""
    parser = sub.add_parser(name, help=help, description=plain(cls.__doc__ or help),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(parser, cls)
    parser.set_defaults(_handler=lambda ns: run(build(cls, ns)), _data_parallel=data_parallel)
    return parser


def command_line() -> str:
    """The command line of this process, for manifests."""
    argv = list(sys.argv)
    if argv:  # the program's name, not where it is installed (a venv path)
        argv[0] = "reprlab" if argv[0].endswith(("reprlab", "__main__.py")) else Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)
