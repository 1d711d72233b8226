"""The import graph of `serving/` (generated `_proto/` aside): no module imports, directly or through others,
one that imports it back (imports inside functions count: they were how the last circle was hidden), and the
HTTP transport imports no protocol (the router lives with the protocols, `serving/protocols/router.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVING = Path(__file__).resolve().parent.parent / "serving"


def modules() -> dict[str, Path]:
    found = {}
    for path in SERVING.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        parts = path.relative_to(SERVING.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the serving modules it imports (a `from package import name` counts `package.name` when it
    is a module, else `package`)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    graph[name].add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
        graph[name] = {t for t in graph[name] if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_serving_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "serving.protocols.router" in graph and graph["serving.app"]  # the graph was read
    assert cycles(graph) == []


def test_the_http_transport_imports_no_protocol():
    graph = import_graph()
    upward = sorted((m, t) for m, targets in graph.items() if m.startswith("serving.transport")
                    for t in targets if t.startswith("serving.protocols"))
    assert upward == []


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
