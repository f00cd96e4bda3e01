"""The `transferkit` package's import graph: no cycles, and no building block imports the job layer.

Every module under transferkit/, registry/ and cli/ is parsed with `ast` (imports inside functions
included), mapped into the `transferkit` namespace the way setuptools installs it (registry/ ->
transferkit.registry, cli/ -> transferkit.cli), and each import becomes an edge to the module it names
(`from package import name` is an edge to `package.name` when that is a module, else to `package`).
Imports under `if TYPE_CHECKING:` are left out: they never run, so they cannot form an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"transferkit": REPO / "transferkit", "transferkit.registry": REPO / "registry", "transferkit.cli": REPO / "cli"}

# The job layer: whole jobs a user runs (train-source, transfer, merge, compare, reproduce).
JOB_MODULES = {
    "transferkit.workflows",
    "transferkit.composition.transfer",
    "transferkit.composition.merge",
    "transferkit.composition.compare",
    "transferkit.reproduce",
}
# Only these sit above the job layer and may import it: the command line, the Python API, and `grids`
# (the `compare` grids stored in a registry, read back with `compare`'s own tables for the report and the UI).
ABOVE_JOBS = ("transferkit.cli", "transferkit.api", "transferkit.composition.grids")
# Building-block packages named in the layering: none of their modules (job modules aside) imports a job.
BUILDING_BLOCKS = ("transferkit.composition", "transferkit.methods", "transferkit.training", "transferkit.registry",
                   "transferkit.tasks", "transferkit.interop")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the installed package."""
    modules: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([prefix, *parts])] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The innermost package module `name` lives in (None for third-party imports)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` blocks."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside functions)."""
    modules = modules or module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(found for target in targets if (found := _resolve(target, modules)) is not None)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules, each reported as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # iterative Tarjan: deep graphs must not hit the recursion limit
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle a -> b -> ... -> a inside a strongly connected group (shortest from its first member)."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    return group


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text("import pkg.a\nimport os\n")
    modules = {"pkg": package / "__init__.py", **{f"pkg.{n}": package / f"{n}.py" for n in "abc"}}
    graph = import_graph(modules)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_every_root_is_parsed():
    modules = module_files()
    assert JOB_MODULES <= set(modules)
    assert {"transferkit.registry", "transferkit.cli.app", "transferkit.composition.mixture"} <= set(modules)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in transferkit:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", BUILDING_BLOCKS)
def test_building_blocks_do_not_import_jobs(layer):
    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _within(module, layer) and module not in JOB_MODULES and not any(_within(module, p) for p in ABOVE_JOBS)
        for target in targets & JOB_MODULES
    )
    assert not upward, "building blocks import the job layer:\n" + "\n".join(upward)


def test_only_the_cli_api_and_jobs_import_jobs():
    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module not in JOB_MODULES and not any(_within(module, prefix) for prefix in ABOVE_JOBS)
        for target in targets & JOB_MODULES
    )
    assert not upward, "modules below the job layer import it:\n" + "\n".join(upward)
