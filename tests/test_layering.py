"""The package's imports run one way: commands → training → config → tasks → data / langevin → model → errors.

Walks every module of ``almond_cli`` with ``ast`` (imports inside functions count too: a late import is still a
dependency) and fails on an import circle or on an import from a lower layer into a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "almond_cli"

# Layer of each top-level part of the package: a module may import its own part and the parts of lower layers.
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "model": 1,
    "data": 2,
    "langevin": 2,
    "tasks": 3,
    "config": 4,
    "training": 5,
    "commands": 6,
    "__main__": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The ``almond_cli`` modules that ``path`` imports (a ``from package import name`` of a submodule counts
    as that submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("almond_cli"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("almond_cli"):
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {target})
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_ROOT.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {
        module_name(path): imported_modules(path, known)
        for path in paths
        if "configs" not in path.relative_to(PACKAGE_ROOT).parts
    }


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search with colours)."""
    colour = {module: 0 for module in graph}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        colour[module] = 1
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if colour.get(imported) == 1:
                return stack[stack.index(imported) :] + [imported]
            if colour.get(imported) == 0:
                found = visit(imported)
                if found:
                    return found
        stack.pop()
        colour[module] = 2
        return None

    for module in sorted(graph):
        if colour[module] == 0:
            found = visit(module)
            if found:
                return found
    return None


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (the graph must be acyclic)."""
    memo: dict[str, list[str]] = {}

    def chain(module: str) -> list[str]:
        if module not in memo:
            below = [chain(imported) for imported in graph.get(module, ())]
            memo[module] = [module] + max(below, key=len, default=[])
        return memo[module]

    return max((chain(module) for module in graph), key=len)


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module) for module in import_graph()} - {"__init__", "configs"}
    assert parts <= set(LAYERS), f"give {sorted(parts - set(LAYERS))} a layer in LAYERS"


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_run_from_higher_layers_to_lower_ones():
    wrong = []
    for module, imported in import_graph().items():
        source = part_of(module)
        for target in imported:
            destination = part_of(target)
            if destination != source and LAYERS.get(destination, -1) >= LAYERS.get(source, 99):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering: " + "; ".join(sorted(wrong))


def test_the_checker_sees_a_circle_and_a_wrong_way_import():
    """The checks above can fail: a circle and an upward import in a made-up graph are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert longest_chain({"a": {"b"}, "b": {"c"}, "c": set()}) == ["a", "b", "c"]
    graph = import_graph()
    assert "almond_cli.model.model" in graph["almond_cli.training.build"]  # relative imports are resolved
