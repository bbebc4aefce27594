"""No import cycles among the project's modules (grpo, interventions, experiments, analysis).

The graph is parsed from every module's imports with ``ast``, at any depth: function-local imports and those
under ``if TYPE_CHECKING:`` count too (a type-only cycle is still two modules that cannot be read apart). An
edge ``a -> b`` means module ``a`` imports module ``b`` (``from b import name`` where ``b.name`` is a module
is an edge to ``b.name``); importing a package's submodule does not count as importing the package's
``__init__`` (it holds no code here).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo", "interventions", "experiments", "analysis")


def module_names(root: Path) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` names or lies in (``grpo.trainer.Trainer`` -> ``grpo.trainer``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 parents
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != name and modules[found].name != "__init__.py":
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One message per strongly connected component of two or more modules, naming one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan (the graph is a few hundred nodes: recursion is fine)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [f"import cycle: {' -> '.join(_cycle_through(graph, c))}" for c in sorted(components)]


def _cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest cycle from the component's first module back to itself (breadth-first)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {component}")


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "\n".join(found)


def test_a_cycle_is_named_type_only_imports_included(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "grpo" / "credit.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from grpo.quadrants import EntropySplit\n"
    )
    (tmp_path / "grpo" / "quadrants.py").write_text("from grpo.credit import TokenFacts\n")
    (tmp_path / "grpo" / "loss.py").write_text("from grpo import credit\n")
    (tmp_path / "experiments" / "app.py").write_text("def f():\n    from . import tool\n")
    (tmp_path / "experiments" / "tool.py").write_text("import experiments.app\n")
    assert cycles(import_graph(tmp_path)) == [
        "import cycle: experiments.app -> experiments.tool -> experiments.app",
        "import cycle: grpo.credit -> grpo.quadrants -> grpo.credit",
    ]
