"""The library's modules import one another without a circle: every import counts (module level, under
TYPE_CHECKING and inside functions), so the data path can be read in one direction."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as
PACKAGES = {"resel": "resel", "resel_train": "resel_train", "resel_deploy": "resel_deploy",
            "resel_experiments": "resel_experiments", "export": "resel.export", "cli": "resel.cli"}


def library_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the library packages."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the library modules it imports anywhere in its file (a parent package of itself excluded)."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            targets |= {t for t in map(owner, names) if t and t != module and not module.startswith(t + ".")}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_sees_a_circle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_library_has_no_import_circle():
    modules = library_modules()
    assert {"resel_train.trainer", "resel_train.callbacks", "resel.export.onnx", "resel_deploy.contract"} <= set(modules)
    graph = import_graph(modules)
    assert "resel_train.config" in graph["resel_train.trainer"]  # the graph sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
