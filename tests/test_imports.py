"""The shape of normlib's imports: no circle, and every public name of the previous API still imports.

The import graph is read from the source with ``ast`` (nothing is imported to build it), and
counts every import statement, also those inside functions: an import moved into a function to
break a circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "normlib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def import_graph() -> dict[str, set[str]]:
    """``module -> the normlib modules it imports`` (a package counts as its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                # `from normlib import functional` imports the submodule, not only the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != module)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_from_every_module():
    graph = import_graph()
    assert "normlib.functional" in graph and "normlib.cli" in graph
    assert "normlib.functional" in graph["normlib.layers"]  # `from normlib import functional as NF`
    assert "normlib.cli" in graph["normlib.diagnose"]


def test_the_cycle_finder_finds_a_circle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_normlib_module_imports_another_that_imports_it_back():
    cycles = _cycles(import_graph())
    assert not cycles, f"import circles: {cycles}"


def test_the_entry_point_is_imported_by_no_module():
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if "normlib.__main__" in edges)
    assert importers == []


@pytest.mark.parametrize("layer, above", [
    ("normlib.functional", ("normlib.layers", "normlib.models", "normlib.analysis", "normlib.train",
                            "normlib.diagnose", "normlib.hessian")),
    ("normlib.layers", ("normlib.models", "normlib.analysis", "normlib.train", "normlib.diagnose")),
    ("normlib.models", ("normlib.analysis", "normlib.train", "normlib.diagnose")),
])
def test_data_flows_one_way_lower_layers_never_import_higher_ones(layer, above):
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    reached = reach(layer)
    assert not [m for m in reached if any(m == a or m.startswith(a + ".") for a in above)], reached
