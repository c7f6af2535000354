"""Human approval of the controller's proposals (``--approve``; ``AgentConfig.approve``).

The graph pauses with LangGraph ``interrupt()`` before tool calls that change something and hands the
proposal to an *approver*: a callable ``approver(proposal) -> answer``.

    proposal = {"epoch": 3, "text": "...", "tool_calls": [{"index": 0, "tool": "set_lr", "args": {...}}]}
    answer   = "accept" | {"action": "reject", "reason": "..."}
             | {"action": "edit", "edits": {0: {"lr": 0.0005}}}      # index of the call -> new argument values
    Any answer dict may add ``"note": "..."``: a note the next decision sees once (the terminal asks with [n]).

Edited values go through the tools' validation like the model's own (an out-of-range edit is rejected
with the allowed range, and nothing changes). The answer is recorded in the decision (MLflow ``decisions``
table, column ``review``) beside what the model proposed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table


class ScriptedApprover:
    """Answers from a list, in order (tests, replaying a session). Runs out -> error, never a silent accept."""

    def __init__(self, answers: Iterable):
        self.answers = list(answers)
        self.seen: list[dict] = []

    def __call__(self, proposal: dict):
        self.seen.append(proposal)
        if not self.answers:
            raise RuntimeError(
                f"the scripted approver has no answer left for the proposal of epoch {proposal.get('epoch')}"
            )
        return self.answers.pop(0)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(text: str) -> dict:
    """``"lr=0.0005 reason=smaller"`` -> ``{"lr": 0.0005, "reason": "smaller"}`` (values read as JSON when
    they are JSON: numbers, true/false, quoted strings). Raises ValueError on a part without ``=``."""
    out = {}
    for part in text.replace(",", " ").split():
        if "=" not in part:
            raise ValueError(f"{part!r} is not name=value")
        name, value = part.split("=", 1)
        out[name.strip()] = _parse_value(value.strip())
    return out


class TerminalApprover:
    """Shows the proposed tool calls and asks: accept, edit a value, or reject (with a reason)."""

    def __init__(self, console: Console | None = None, ask: Callable[[str], str] | None = None):
        self.console = console or Console()
        self.ask = ask or (lambda prompt: self.console.input(escape(prompt)))

    def __call__(self, proposal: dict):
        table = Table(title=f"Proposed decision after epoch {proposal.get('epoch')}")
        table.add_column("#")
        table.add_column("tool")
        table.add_column("arguments")
        for call in proposal["tool_calls"]:
            table.add_row(str(call["index"]), call["tool"], json.dumps(call["args"], default=str))
        self.console.print(table)
        note = ""
        while True:
            choice = self.ask("[a]ccept, [e]dit a value, [r]eject? ([n]: a note for the next decision) ")
            choice = choice.strip().lower()
            if choice in ("n", "note"):
                note = self.ask("note (the next decision sees it once): ").strip()
                continue
            extra = {"note": note} if note else {}
            if choice in ("a", "accept", ""):
                return {"action": "accept", **extra} if note else "accept"
            if choice in ("r", "reject"):
                return {
                    "action": "reject",
                    "reason": self.ask("reason: ").strip() or "rejected in the terminal",
                    **extra,
                }
            if choice in ("e", "edit"):
                edits = self._ask_edits(proposal)
                if edits:
                    return {"action": "edit", "edits": edits, **extra}
                self.console.print("no edit given; choose again")
                continue
            self.console.print(escape(f"{choice!r}: type a, e, r or n"))

    def _ask_edits(self, proposal: dict) -> dict:
        edits = {}
        for call in proposal["tool_calls"]:
            while True:
                text = self.ask(
                    f"#{call['index']} {call['tool']}: new values as name=value (empty: keep) "
                ).strip()
                if not text:
                    break
                try:
                    edits[call["index"]] = parse_assignments(text)
                    break
                except ValueError as exc:
                    self.console.print(f"{exc}; for example: lr=0.0005")
        return edits
