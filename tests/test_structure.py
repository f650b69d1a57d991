"""The package's shape: imports point one way (no circles, type-hint imports included), and the modules that
describe a run's results and files load without TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mnist_mlp
from tests.conftest import child_env

PACKAGE = Path(mnist_mlp.__file__).parent
# `mnist-mlp plot` and the sweep report need no TensorFlow; neither does describing a run.
TENSORFLOW_FREE = ("config", "data", "history", "plot_worker", "plots", "progress", "results", "rundir", "study",
                   "sweep_file", "sweep_report", "versions")  # fmt: skip


def package_imports(path: Path) -> set[str]:
    """The mnist_mlp modules a file imports anywhere in it: at the top, in functions, under TYPE_CHECKING."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mnist_mlp" and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: package_imports(path) for path in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return [*path[path.index(child) :], child]
            if child not in state and (cycle := visit(child, [*path, child])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_circle_through_a_type_hint(tmp_path):
    source = tmp_path / "a.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mnist_mlp.run import RunResult\n")
    assert package_imports(source) == {"run"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_results_run_files_and_plots_load_without_tensorflow():
    imports = "; ".join(f"import mnist_mlp.{name}" for name in TENSORFLOW_FREE)
    check = f"import sys; {imports}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=child_env(), check=True)
    assert out.stdout.strip() == "False"
