"""``scripted:<file>``: replays tool calls from a JSON or YAML file (tests, demos, replaying a logged run).

File format (``mimic-learn export-decisions`` writes it)::

    decisions:
      - epoch: 1                         # the epoch that just ended
        tool_calls:                      # one model turn ...
          - {name: set_lr, args: {lr: 0.0005, reason: "plateau"}}
      - epoch: 2
        turns:                           # ... or several turns (e.g. a bad call, then its correction)
          - [{name: set_lr, args: {lr: 50, reason: "too big"}}]
          - [{name: set_lr, args: {lr: 0.002, reason: "corrected"}}]

An epoch with no entry gets no tool call. A bare list is read as the ``decisions`` list.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from langchain_core.messages import AIMessage, ToolMessage

from .protocol import ProtocolChatModel, tool_call


def load_script(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scripted controller file {path} does not exist")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    decisions = data.get("decisions", []) if isinstance(data, dict) else data
    if not isinstance(decisions, list):
        raise ValueError(f"{path}: expected a list of decisions (see mimic_learn.agents.scripted)")
    return decisions


class ScriptedChatModel(ProtocolChatModel):
    decisions: list[dict]
    # Turns to replay when an epoch has no entry; None means "no tool call" (a default for looping tests).
    default_turns: list[list[dict]] | None = None
    repeat_last_turn: bool = False  # keep calling the last turn's tools forever (tests the call budget)

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedChatModel:
        return cls(decisions=load_script(path))

    @property
    def _llm_type(self) -> str:
        return "mimic-scripted"

    def _turns_for(self, epoch: int) -> list[list[dict]]:
        for entry in self.decisions:
            if int(entry.get("epoch", -1)) == epoch:
                if "turns" in entry:
                    return entry["turns"]
                return [entry.get("tool_calls", [])]
        return self.default_turns or []

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        turns = self._turns_for(int(report.get("epoch", -1)))
        if self.repeat_last_turn and turns:
            turn = min(turn, len(turns) - 1)
        if turn < len(turns) and turns[turn]:
            return AIMessage(
                content="", tool_calls=[tool_call(c["name"], c.get("args", {})) for c in turns[turn]]
            )
        return AIMessage(content="script done for this epoch")
