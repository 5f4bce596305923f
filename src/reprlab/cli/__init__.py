"""The ``reprlab`` command line.

Each workflow module exposes ``register(subparsers)``, which adds its subcommand(s); each
subcommand is one dataclass (see :mod:`reprlab.cliutil`) whose field help becomes ``--help``
text. ``main(argv=None)`` is importable so tests drive the CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

from reprlab import __version__
from reprlab.errors import ReprlabError

#: subcommand name -> module that registers it (imported when the CLI is built; a module
#: whose file is absent from this build is skipped)
COMMANDS: dict[str, str] = {
    "capture": "reprlab.cli.capture",
    "store": "reprlab.cli.capture",
    "probe": "reprlab.probes.cli",
    "steer": "reprlab.steering.cli",
    "patch": "reprlab.sessions.cli",
    "drift": "reprlab.drift.cli",
    "toy": "reprlab.toy.cli",
    "prefs": "reprlab.prefs.cli",
    "lens": "reprlab.lenses.cli",
    "sweep": "reprlab.sweeps.cli",
    "ndif": "reprlab.ndif_local.cli",
}

#: one line per command for ``reprlab --help``, which lists the commands without importing
#: their modules (a test keeps these equal to the help each module registers)
SUMMARIES: dict[str, str] = {
    "capture": "capture activations into a resumable store",
    "store": "inspect activation stores",
    "probe": "train probes at every layer, with controls, into a report",
    "steer": "steering vectors: fit, generate, validate, export",
    "patch": "activation patching between prompts, layers and models",
    "drift": "how representations move: layers, checkpoints, training",
    "toy": "the toy causal LM trained on a world we know",
    "prefs": "preference training (DPO family) and evaluation across distribution shifts",
    "lens": "read hidden states: logit, tuned and talkative lenses",
    "sweep": "search a workflow's options with Optuna (local, SLURM or Ray)",
    "ndif": "a local NDIF server to test remote code against",
}


#: the commands that share their work among the processes of ``torchrun`` or ``accelerate
#: launch`` (registered with ``data_parallel=True``); every other one refuses to run under them
DATA_PARALLEL = ("prefs train", "lens tuned train", "lens talk train")


def _launched_processes() -> int:
    """``WORLD_SIZE`` as a launcher sets it (1 when absent or unreadable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _module_present(module_name: str) -> bool:
    """Whether a ``reprlab.*`` module's file exists, without importing its package (a
    workflow's package may be heavy to import, or not part of this build)."""
    parts = module_name.split(".")[1:]
    base = Path(__file__).resolve().parent.parent.joinpath(*parts)
    return any(f.is_file() for f in (base.with_suffix(".py"), base.with_suffix(".pyc"),
                                      base / "__init__.py", base / "__init__.pyc"))


def _root() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="reprlab",
        description="Find, test and track what language models represent inside.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"reprlab {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def listing_parser() -> argparse.ArgumentParser:
    """The parser for ``reprlab`` without a command: every command of this build by name and
    summary, none of their modules imported."""
    parser, sub = _root()
    for name, module_name in COMMANDS.items():
        if _module_present(module_name):
            sub.add_parser(name, help=SUMMARIES.get(name, ""), add_help=False)
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``reprlab`` parser; with ``command`` only the module registering that subcommand is
    imported. Registering imports no torch or matplotlib: workflows import them when they run."""
    parser, sub = _root()
    wanted = [COMMANDS[command]] if command in COMMANDS else list(COMMANDS.values())
    for module_name in dict.fromkeys(wanted):
        if not _module_present(module_name):  # a workflow not installed in this build
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("reprlab"):
                continue
            raise
        module.register(sub)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option)."""
    for tok in argv:
        if not tok.startswith("-"):
            return tok if tok in COMMANDS else None
        if tok in ("-h", "--help", "--version"):
            return None
    return None


_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--coeffs -4,0,4`` -> ``--coeffs=-4,0,4``: argparse reads a value that starts with a
    minus sign but is not a plain number as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if (tok.startswith("--") and "=" not in tok and i + 1 < len(argv)
                and _NEGATIVE_VALUE.match(argv[i + 1])):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 user error, 130 interrupted)."""
    argv = join_negative_values(sys.argv[1:] if argv is None else list(argv))
    command = _command_of(argv)
    parser = build_parser(command) if command else None
    if parser is None or command not in parser._subparsers._group_actions[0].choices:
        parser = listing_parser()  # no command, or one this build lacks: list what there is
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    processes = _launched_processes()
    if processes > 1 and not getattr(args, "_data_parallel", False):
        print(f"error: this command runs in one process, but a launcher started {processes} "
              "(WORLD_SIZE): each would repeat the same work and write the same files. Run it "
              "without torchrun / accelerate launch; data-parallel commands: "
              f"{', '.join(DATA_PARALLEL)}", file=sys.stderr)
        return 2
    previous = _term_as_interrupt()
    try:
        return int(handler(args) or 0)
    except ReprlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or a read-only place anywhere: one line, no trace
        message = _disk_message(exc)
        if message is None:
            raise
        print(f"error: {message}; free some space or write elsewhere (--out)", file=sys.stderr)
        return 2
    finally:
        from reprlab.lock import release

        release()  # the run directories this command held (a failed run held them still)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _term_as_interrupt() -> object | None:
    """SIGTERM (what SLURM, Docker and systemd send) stops a command as Ctrl-C does: the
    same one line, exit 130, a run resumable from its last checkpoint. Returns the handler
    it replaced (``None`` off the main thread, where handlers cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (an in-process sweep trial)
        return None


def _disk_message(exc: BaseException) -> str | None:
    """The one line for a full disk or read-only file system (OSError or safetensors' own
    error), ``None`` for anything else."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return f"{exc.strerror}" + (f" writing {exc.filename}" if exc.filename else "")
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and any(
            s in text for s in ("No space left", "Disk quota", "Read-only file system")):
        return text.strip().splitlines()[0][:200]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
