"""The shape of the code, checked: imports go one way and no module imports itself round a cycle.

Layers, lowest first: ``core`` (state, HTTP, identifiers) ← ``launch`` (the SMART client) ← ``app`` (the
viewer) ← ``sandbox`` (the simulated EHR and organisations, development only). A module may import its own
layer and the layers below it, never above. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "launch", "app", "sandbox")
LAYER = {name: i for i, name in enumerate(PACKAGES)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by ``name`` (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{src} imports {dst}"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if LAYER[dst.split(".")[0]] > LAYER[src.split(".")[0]]
    ]


def test_imports_go_one_way():
    assert layer_violations(import_graph()) == []


def test_no_module_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_can_fail():
    """The checkers find what they are for: a made-up upward import and a made-up cycle."""
    graph = {"launch.flow": {"app.config"}, "app.config": set(), "app.a": {"app.b"}, "app.b": {"app.a"}}
    assert layer_violations(graph) == ["launch.flow imports app.config"]
    assert cycles(graph) == [["app.a", "app.b"]]


@pytest.mark.parametrize("package", ["core", "launch"])
def test_lower_layers_never_name_the_viewer(package):
    graph = import_graph()
    assert not [
        m for m, targets in graph.items() if m.startswith(package) and any(t.startswith("app") for t in targets)
    ]
