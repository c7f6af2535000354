"""The experiments/ package's shape: its modules import each other without a cycle (function-level imports
included), no module imports another's private name, none is over 500 lines nor has a function over 80, and a
PBT member's process (which imports ``experiments.pbt``) loads neither MLflow nor LangGraph."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "experiments"


def _sibling_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from .module import names`` in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.append((node.module.split(".")[0], [a.name for a in node.names]))
    return found


def test_modules_import_each_other_without_a_cycle_or_a_private_name():
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in _sibling_imports(path):
            assert target in modules, f"{name} imports .{target}, which is not a module of experiments/"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private {private} from .{target}"
            graph[name].add(target)
    order: list[str] = []
    while len(order) < len(graph):
        ready = sorted(n for n, deps in graph.items() if n not in order and deps <= set(order))
        assert ready, f"import cycle among {sorted(set(graph) - set(order))}"
        order += ready
    assert order.index("stats") < order.index("report") < order.index("reproduction")
    assert order.index("arms") < order.index("spec") < order.index("sweep")


def test_no_module_is_over_500_lines_and_no_function_over_80():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long
    functions = [
        (p.name, node.name, node.end_lineno - node.lineno + 1)
        for p in PACKAGE.glob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    assert not [f for f in functions if f[2] > 80]


def test_a_pbt_members_imports_stay_light():
    probe = (
        "import sys, mimic_learn.experiments.pbt; "
        "print(sorted(m for m in ('mlflow', 'langgraph', 'langchain_core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
