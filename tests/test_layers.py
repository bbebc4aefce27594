"""The layer rule: experiments -> interventions -> grpo; analysis reads MLflow only.

Parsed from every module's imports (ast), so that a violation names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo", "interventions", "experiments", "analysis")
ALLOWED = {
    "grpo": {"grpo"},
    "interventions": {"interventions", "grpo"},
    "experiments": set(PACKAGES),
    "analysis": {"analysis"},
}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the tree, at any depth (function-local too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(root: Path = REPO) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for line, module in imported_modules(tree):
                top = module.split(".")[0]
                if top in PACKAGES and top not in ALLOWED[package]:
                    out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


def test_layers_point_one_way():
    assert violations() == []


def test_a_violation_is_named_by_file_line_and_import(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "grpo" / "loop.py").write_text(
        "import torch\n\n\ndef f():\n    from experiments.tracking import Tracker\n"
    )
    (tmp_path / "analysis" / "read.py").write_text("from grpo.quadrants import QUADRANTS\n")
    (tmp_path / "interventions" / "ok.py").write_text("from grpo.credit import register\n")
    assert violations(tmp_path) == [
        "grpo/loop.py:5 imports experiments.tracking",
        "analysis/read.py:1 imports grpo.quadrants",
    ]


def test_the_core_never_imports_the_vllm_adapter():
    """grpo/ defines the rollout-engine contract (grpo/engine.py); vLLM and its adapter are the app's."""
    found = []
    for path in sorted((REPO / "grpo").rglob("*.py")):
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] == "vllm" or module.startswith("experiments.vllm_engine"):
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert found == []


TRAINING_LOOP = ("grpo.trainer", "grpo.batch", "grpo.instrument")
"""The training loop: it trains (sample, score, advantages, credit, loss, update) and measures nothing itself."""
INSTRUMENT_MODULES = (
    "grpo.instruments",
    "grpo.diagnostics",
    "grpo.cancellation",
    "grpo.probe",
    "grpo.quadrants",
)
"""What a run measures of the study (grpo/instrument.py): the app injects instruments into the loop. The
quadrant split is core for the interventions that act on it; the loop itself never splits."""


def loop_imports_of_instruments(root: Path = REPO) -> list[str]:
    """Every instrument module the training loop reaches through imports (direct or not), with the path."""
    from tests.test_import_cycles import import_graph

    graph = import_graph(root)
    found = []
    for start in [m for m in TRAINING_LOOP if m in graph]:
        parents: dict[str, str] = {start: ""}
        frontier = [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
            frontier = nxt
        for module in sorted(parents):
            if any(module == i or module.startswith(i + ".") for i in INSTRUMENT_MODULES):
                path = [module]
                while parents[path[-1]]:
                    path.append(parents[path[-1]])
                found.append(" -> ".join(reversed(path)))
    return found


def test_the_training_loop_imports_no_instrument():
    found = loop_imports_of_instruments()
    assert not found, "the training loop imports an instrument: " + "; ".join(found)


def test_an_instrument_the_loop_reaches_is_named_with_its_path(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "grpo" / "trainer.py").write_text("from grpo.facts import facts_for\n")
    (tmp_path / "grpo" / "facts.py").write_text("from grpo.diagnostics import logprob_change\n")
    (tmp_path / "grpo" / "diagnostics.py").write_text("import torch\n")
    assert loop_imports_of_instruments(tmp_path) == ["grpo.trainer -> grpo.facts -> grpo.diagnostics"]
