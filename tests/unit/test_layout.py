"""The import graph of `serving/` (generated `_proto/` aside): no module imports, directly or through others,
one that imports it back (imports inside functions count: they were how the last circle was hidden), and
every arrow points down the floors of the house (README, Layout): a folder imports only the folders below
it, so the HTTP transport imports no protocol and no observer knows the worker processes."""

from __future__ import annotations

import ast
from pathlib import Path

SERVING = Path(__file__).resolve().parents[2] / "serving"


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


#: The floors, bottom up: the words every part uses, then each folder of serving/; the modules at the top of
#: serving/ that are not words (app, cli, __main__) wire the floors and sit above them all.
WORDS = {"serving", "serving.errors", "serving.redact", "serving.settings"}
FLOORS = ["core", "codecs", "ops", "transport", "protocols", "queue", "platform", "tools"]


def floor(module: str) -> int:
    if module in WORDS:
        return 0
    parts = module.split(".")
    return 1 + FLOORS.index(parts[1]) if len(parts) > 2 else len(FLOORS) + 1


def test_every_folder_is_a_floor_and_every_import_points_down():
    graph = import_graph()
    folders = {p.name for p in SERVING.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - {"_proto"}
    assert folders == set(FLOORS)
    upward = sorted((m, t) for m, targets in graph.items() for t in targets if floor(t) > floor(m))
    assert upward == []


def test_the_http_transport_imports_no_protocol():
    graph = import_graph()
    upward = sorted((m, t) for m, targets in graph.items() if m.startswith("serving.transport")
                    for t in targets if t.startswith("serving.protocols"))
    assert upward == []


def test_an_upward_import_is_found_when_there_is_one():
    graph = {"serving.ops.metrics": {"serving.platform.siblings", "serving.core.stats"}, "serving.app": {
        "serving.ops.metrics"}, "serving.settings": {"serving.core.remote"}}
    upward = sorted((m, t) for m, targets in graph.items() for t in targets if floor(t) > floor(m))
    assert upward == [("serving.ops.metrics", "serving.platform.siblings"), ("serving.settings", "serving.core.remote")]


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The most lines a function of serving/ may have (def to last line; a nested function counts on its own too).
MAX_FUNCTION_LINES = 40


def test_no_function_of_serving_is_over_forty_lines():
    long = sorted(f"{path.relative_to(SERVING.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                  for path in modules().values() for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES)
    assert long == []
