"""The package's shape, from the redesign's done-when list: no import cycle (load-time imports), no source file
over 500 lines, no function whose body is over 80 lines, and no upward import between the layers

    training  <-  tools  <-  agents  <-  graphs  <-  evals / experiments  <-  cli

(``training`` also imports nothing from tracking/integrations nor LangChain, LangGraph or MLflow; ``tools`` nothing from
tracking). Imports are read with ``ast`` at every depth (a function-level import counts as much as a top-level
one), relative imports resolved against the importing module. The package is every ``.py`` under the repository
root except the folders that are not installed code (tests, benchmarks, examples, scripts, hidden folders).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_NAME = "mimic_learn"
NOT_PACKAGE = {"tests", "benchmarks", "examples", "scripts", "docs", "build", "dist", "__pycache__"}
MAX_FILE_LINES = 500
MAX_FUNCTION_BODY_LINES = 80

# layer -> the layers above it, which it must not import
FORBIDDEN: dict[str, set[str]] = {
    "training": {"tools", "agents", "graphs", "evals", "experiments", "tracking", "cli", "integrations"},
    "tools": {"agents", "graphs", "evals", "experiments", "tracking", "cli"},
    "agents": {"graphs", "evals", "experiments", "cli"},
    "graphs": {"evals", "experiments", "cli"},
    "evals": {"cli"},
    "experiments": {"cli"},
}
# layer -> third-party distributions it must not import (by top-level name prefix): the trainer knows nothing of
# LLMs or of the tracking server, so it runs on a bare GPU machine with torch alone (benchmarks/gpu_check.py).
FORBIDDEN_THIRD_PARTY: dict[str, tuple[str, ...]] = {"training": ("langchain", "langgraph", "mlflow")}


def package_files(root: Path = ROOT) -> list[Path]:
    """Every module of the installed package, as paths under the repository root."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not any(part in NOT_PACKAGE or part.startswith(".") for part in path.relative_to(root).parts[:-1])
    )


def module_name(path: Path, root: Path = ROOT) -> str:
    """``agents/local.py`` -> ``mimic_learn.agents.local``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE_NAME, *parts])


def import_target(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` reads, its relative dots resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth; ``from X import a`` yields both
    ``X`` and ``X.a`` (``a`` may be a submodule)."""
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = import_target(node, package)
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def layer_of(module: str) -> str | None:
    """The package's top-level folder a module is in (``mimic_learn.agents.local`` -> agents); None outside."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE_NAME and len(parts) > 1 else None


def is_upward(layer: str, module: str) -> bool:
    """Whether code in ``layer`` may not import ``module`` (a layer above it, or a banned third-party one)."""
    if module.split(".")[0] == PACKAGE_NAME:
        return layer_of(module) in FORBIDDEN.get(layer, set())
    return module.split(".")[0].startswith(FORBIDDEN_THIRD_PARTY.get(layer, ()))


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    layer = layer_of(module_name(path, root)) or ""
    rel = path.relative_to(root)
    return sorted(
        {
            f"{rel}:{line} imports {module}"
            for line, module in imported_modules(path, root)
            if is_upward(layer, module)
        }
    )


def long_functions(path: Path, root: Path = ROOT) -> list[str]:
    """Functions whose body (first statement to last line; the signature, e.g. a typer command's declarative
    parameter list, does not count) is over the limit."""
    rel = path.relative_to(root)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.end_lineno - node.body[0].lineno + 1
            if body > MAX_FUNCTION_BODY_LINES:
                out.append(f"{rel}:{node.lineno} {node.name} body {body} lines")
    return out


# Known violations outside this test's author's files, each a strict xfail so that fixing it is noticed.
KNOWN: dict[str, str] = {}


def _cases(check) -> list:
    params = []
    for path in package_files():
        rel = str(path.relative_to(ROOT))
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN[f"{check}:{rel}"])]
            if f"{check}:{rel}" in KNOWN
            else []
        )
        params.append(pytest.param(path, id=rel, marks=marks))
    return params


def test_the_package_is_found():
    names = {module_name(p) for p in package_files()}
    assert {"mimic_learn.training.trainer", "mimic_learn.agents.local", "mimic_learn.graphs.graph"} <= names
    assert not [n for n in names if set(n.split(".")[1:2]) & NOT_PACKAGE]


@pytest.mark.parametrize("path", _cases("lines"))
def test_no_file_is_over_500_lines(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


@pytest.mark.parametrize("path", _cases("function"))
def test_no_function_body_is_over_80_lines(path: Path):
    assert not long_functions(path)


@pytest.mark.parametrize("path", _cases("imports"))
def test_no_upward_import_between_layers(path: Path):
    assert not upward_imports(path)


def test_the_checks_can_fail(tmp_path: Path):
    """The helpers see what they are meant to see: a function-level relative import up the layers and a
    third-party one LangGraph, a long body (but not a long signature)."""
    (tmp_path / "training").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import langgraph\n")
    module = tmp_path / "training" / "bad.py"
    params = "".join(f"    p{i}: int = 0,\n" for i in range(90))
    module.write_text(
        "def f():\n    from ..agents.local import x\n    import langgraph.graph\n    from ..tools import t\n"
        + "    y = 1\n" * 90
        + f"def g(\n{params}) -> None:\n    pass\n"
    )
    assert package_files(tmp_path) == [module]
    assert module_name(module, tmp_path) == "mimic_learn.training.bad"
    assert upward_imports(module, tmp_path) == [
        "training/bad.py:2 imports mimic_learn.agents.local",
        "training/bad.py:2 imports mimic_learn.agents.local.x",
        "training/bad.py:3 imports langgraph.graph",
        "training/bad.py:4 imports mimic_learn.tools",
        "training/bad.py:4 imports mimic_learn.tools.t",
    ]
    assert long_functions(module, tmp_path) == ["training/bad.py:1 f body 93 lines"]


def top_level_imports(path: Path, root: Path = ROOT, modules: set[str] | None = None) -> set[str]:
    """The package modules ``path`` imports when it is loaded (module level; a function's imports run later):
    ``from X import a`` counts as ``X.a`` when that is a module, else as ``X``."""
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    modules = modules if modules is not None else {module_name(p, root) for p in package_files(root)}
    out = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            target = import_target(node, package)
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            names_left = [a for a in node.names if f"{target}.{a.name}" not in modules]
            out |= subs | ({target} if names_left and target in modules else set())
    return out - {own}


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Cycles among the modules' load-time imports, a package's ``__init__`` re-exporting its own submodules
    excepted (a submodule importing a sibling through ``from . import x`` loads x, not the package's names)."""
    files = package_files(root)
    modules = {module_name(p, root) for p in files}
    graph = {module_name(p, root): top_level_imports(p, root, modules) for p in files}
    for mod, deps in graph.items():  # a submodule does not depend on its own package's __init__
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycle():
    assert import_cycles() == []


def test_the_cycle_check_can_fail(tmp_path: Path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("from .a import x\n")
    (tmp_path / "tools" / "a.py").write_text("from . import b\nx = 1\n")
    (tmp_path / "tools" / "b.py").write_text("def f():\n    from .a import x\n")  # function level: no cycle
    assert import_cycles(tmp_path) == []
    (tmp_path / "tools" / "b.py").write_text("from .a import x\n")
    assert import_cycles(tmp_path) == [["mimic_learn.tools.a", "mimic_learn.tools.b", "mimic_learn.tools.a"]]
