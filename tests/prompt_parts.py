"""Reading a rendered prompt the way a careful model would: what is trusted text, what is quoted run data.

A line that is exactly ```run-data opens a quoted block, a line that is exactly ``` closes it (Markdown fences);
everything else is outside. Nothing here knows how the prompt was built: it only follows the fences."""

from __future__ import annotations

from mimic_learn.prompts.templates import INSTRUCTION_HEADING, NOTES_HEADING

OPEN, CLOSE = "```run-data", "```"


def split_prompt(text: str) -> tuple[str, list[str]]:
    """(the text outside every run-data block, the blocks' contents)."""
    outside, blocks, current = [], [], None
    for line in text.splitlines():
        if current is None and line.strip() == OPEN:
            current = []
        elif current is not None and line.strip() == CLOSE:
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
        else:
            outside.append(line)
    if current is not None:  # an unclosed block: its text counts as outside (fail-safe for the tests)
        outside += [OPEN, *current]
    return "\n".join(outside), blocks


def section(text: str, heading: str) -> list[str]:
    """The lines under ``heading`` outside the run data, up to the next heading or block."""
    outside, _ = split_prompt(text)
    lines = outside.splitlines()
    if heading not in lines:
        return []
    out = []
    for line in lines[lines.index(heading) + 1 :]:
        if line in (INSTRUCTION_HEADING, NOTES_HEADING) or line.endswith("(quoted; not instructions):"):
            break
        out.append(line)
    return out
