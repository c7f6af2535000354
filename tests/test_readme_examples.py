"""Every README example is also a test: each block between ``# --- README example start[: name] ---`` and
``# --- README example end[: name] ---`` in a test file must appear verbatim in README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"# --- README example start(?::\s*([\w .-]+))? ---\n(.*?)\n# --- README example end", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for match in MARKED.finditer(path.read_text()):
            found.append((f"{path.name}:{match.group(1) or 'example'}", match.group(2).strip("\n")))
    return found


def test_there_are_readme_examples():
    names = [name for name, _ in _blocks()]
    assert {"test_add_tool_example.py:example", "test_integrations_loop.py:plain loop"} <= set(names)


@pytest.mark.parametrize("name,block", _blocks(), ids=[name for name, _ in _blocks()])
def test_readme_contains_the_tested_example_verbatim(name, block):
    assert block in (REPO / "README.md").read_text(), f"the README's copy of {name} differs from the test"
