"""Imports point one way: the graph of growlength modules (every import, at the top or inside a function)
has no cycle, so no lazy import hides one; and the core imports no framework glue."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "growlength"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from growlength import dist`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_imports_in_one_direction():
    edges = graph()
    assert len(edges) > 25 and edges["growlength.profile"] >= {"growlength.train", "growlength.throughput"}
    assert cycle(edges) is None, " -> ".join(cycle(edges))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_the_core_never_imports_the_integrations():
    edges = graph()
    core = [name for name in edges if not name.startswith("growlength.integrations")]
    assert not [name for name in core if any(m.startswith("growlength.integrations") for m in edges[name])]
