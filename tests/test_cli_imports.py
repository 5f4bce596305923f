"""Structure: no import circles in the package; building the CLI imports neither torch nor
matplotlib."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "reprlab").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None) == "TYPE_CHECKING"


def import_graph() -> dict[str, set[str]]:
    """module -> reprlab modules it imports anywhere (functions included, typing-only not)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and _is_type_checking(node)
                       for n in ast.walk(node)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    found.add(full if full in mods else node.module)
        edges = set()
        for m in found:
            while m and m not in mods:
                m = m.rpartition(".")[0]
            # a module's own parent packages load first anyway: not a dependency
            if m and m != name and not name.startswith(m + "."):
                edges.add(m)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_import_circles_in_the_package():
    graph = import_graph()
    assert "reprlab.steering.readout" in graph and "reprlab.probes.run" in graph
    assert cycles(graph) == []
    # the three that used to exist
    assert "reprlab.steering.validate" not in graph["reprlab.probes.run"]
    assert "reprlab.sessions.api" not in graph["reprlab.sessions.nnsight_backend"]
    assert "reprlab.steering.vector" not in graph["reprlab.steering.operators"]


def test_probing_does_not_import_steering():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("reprlab.probes.") and name != "reprlab.probes.cli":
            assert not any(e.startswith("reprlab.steering") for e in edges), name


# -- the CLI starts without the heavy libraries ------------------------------------------------
HEAVY = ("torch", "matplotlib", "transformers", "numpy")

_BUILD = """
import sys, time
t = time.process_time()
from reprlab.cli import build_parser
parser = build_parser(%r)
cpu = time.process_time() - t
heavy = [m for m in %r if m in sys.modules]
print(repr((cpu, heavy, sorted(parser._subparsers._group_actions[0].choices))))
"""


def _run(code: str) -> str:
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _commands() -> list:
    from reprlab.cli import COMMANDS, _module_present

    out = []
    for name, module in COMMANDS.items():
        if not _module_present(module):
            continue
        out.append(pytest.param(name))
    return out


def test_building_the_whole_parser_is_cheap():
    code = _BUILD % (None, HEAVY)
    cpu, heavy, commands = ast.literal_eval(_run(code).split("\n")[-2])
    assert heavy == []
    assert {"capture", "store", "probe", "steer", "patch", "drift"} <= set(commands)
    assert cpu < 1.0


def test_reprlab_help_lists_every_command_without_importing_them():
    code = """
import contextlib, io, sys, time
t = time.process_time()
from reprlab.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        main(["--help"])
    except SystemExit:
        pass
cpu = time.process_time() - t
loaded = sorted(m for m in sys.modules if m.endswith(".cli") and m != "reprlab.cli")
print(repr((cpu, [m for m in HEAVY if m in sys.modules], loaded, buf.getvalue())))
""".replace("HEAVY", repr(HEAVY))
    cpu, heavy, loaded, text = ast.literal_eval(_run(code).strip().splitlines()[-1])
    assert heavy == [] and loaded == []
    assert cpu < 1.0
    from reprlab.cli import COMMANDS, _module_present

    for name, module in COMMANDS.items():
        assert (name in text) == _module_present(module), name


def test_summaries_equal_the_help_each_module_registers():
    from reprlab.cli import COMMANDS, SUMMARIES, build_parser

    for name in COMMANDS:
        action = build_parser(name)._subparsers._group_actions[0]
        helps = {a.dest: a.help for a in action._choices_actions}
        assert helps[name] == SUMMARIES[name], name


def test_a_command_this_build_lacks_gets_the_list(monkeypatch, capsys):
    import reprlab.cli as cli

    monkeypatch.setitem(cli.COMMANDS, "ghost", "reprlab.no_such_package.cli")
    assert "ghost" not in cli.build_parser("ghost")._subparsers._group_actions[0].choices
    try:
        cli.main(["ghost"])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'ghost'" in err and "'probe'" in err


@pytest.mark.parametrize("command", _commands())
def test_building_a_command_imports_no_torch_or_matplotlib(command):
    cpu, heavy, commands = ast.literal_eval(_run(_BUILD % (command, HEAVY)).split("\n")[-2])
    assert heavy == [], f"building `reprlab {command}` imported {heavy}"
    assert command in commands
    assert cpu < 1.0  # ~0.05 s of CPU on a quiet machine


def test_every_subcommand_help_without_torch():
    import itertools

    code = """
import contextlib, io, sys
from reprlab.cli import main
seen = {}
for argv in %r:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main([*argv, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, argv
    seen[" ".join(argv)] = buf.getvalue()
    assert "torch" not in sys.modules and "matplotlib" not in sys.modules, argv
print(repr(seen))
"""
    argvs = [[], ["capture"], ["store"], ["store", "info"], ["probe"], ["patch"], ["patch", "sweep"],
             *(["steer", a] for a in ("vector", "generate", "validate", "export", "import")),
             ["steer"], ["drift"], *(["drift", a] for a in ("layers", "checkpoints", "train")),
             *(["toy", a] for a in ("build", "path", "info")),
             *(["prefs", a] for a in ("train", "eval", "compare")),
             ["lens", "logit"], ["lens", "tuned", "train"], ["lens", "talk", "explain"],
             ["sweep"]]
    seen = ast.literal_eval(_run(code % (argvs,)).strip().splitlines()[-1])
    assert set(seen) == {" ".join(a) for a in argvs}
    for text in itertools.chain(seen.values()):
        assert text.startswith("usage: reprlab")
        assert "``" not in text and ":mod:`" not in text  # no RST markup in terminal help


def test_version_flag(capsys):
    import reprlab
    from reprlab.cli import main

    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"reprlab {reprlab.__version__}"


def test_lazy_packages_keep_their_public_names():
    import reprlab.drift.compare  # noqa: F401 - the submodule first: the name stays the function
    import reprlab.steering.validate  # noqa: F401
    from reprlab.drift import compare
    from reprlab.probes import Probe, sweep
    from reprlab.steering import generate, metrics, validate

    assert callable(compare) and compare.__module__ == "reprlab.drift.compare"
    assert callable(sweep) and sweep.__module__ == "reprlab.probes.sweep"
    assert callable(validate) and validate.__name__ == "validate"
    assert callable(generate) and metrics.__name__ == "reprlab.steering.metrics"
    assert Probe.__name__ == "Probe"
    import reprlab.probes

    assert "sweep" in dir(reprlab.probes)
    # the top level: reprlab.capture is the function's module made callable
    import reprlab
    import reprlab.capture as capture_module

    assert callable(reprlab.capture) and reprlab.capture is capture_module
    assert callable(capture_module.capture) and callable(capture_module._run_chunk)
    assert reprlab.probe.__module__ == "reprlab.workflows.probe_validate"
    try:
        reprlab.probes.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_help_names_match_the_registries():
    from reprlab.steering.cli import METHOD_NAMES
    from reprlab.steering.directions import METHODS

    assert tuple(METHODS) == METHOD_NAMES
