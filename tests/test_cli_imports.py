"""Structure: no import circles in the package; building the CLI imports neither torch nor
matplotlib."""

from __future__ import annotations

import ast
from pathlib import Path

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


#: packages being built now, checked once they settle
NEW = ("reprlab.toy", "reprlab.prefs", "reprlab.lenses", "reprlab.sweeps")


def test_no_import_circles_in_the_package():
    graph = import_graph()
    assert "reprlab.steering.readout" in graph and "reprlab.probes.run" in graph
    found = [c for c in cycles(graph) if not all(m.startswith(NEW) for m in c)]
    assert found == []
    # the three that used to exist
    assert "reprlab.steering.validate" not in graph["reprlab.probes.run"]
    assert "reprlab.sessions.api" not in graph["reprlab.sessions.nnsight_backend"]
    assert "reprlab.steering.vector" not in graph["reprlab.steering.operators"]


def test_probing_does_not_import_steering():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("reprlab.probes.") and name != "reprlab.probes.cli":
            assert not any(e.startswith("reprlab.steering") for e in edges), name
