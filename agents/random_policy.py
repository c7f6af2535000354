"""``random[:seed]``: a seeded random policy over the same tool protocol — the floor any controller must beat.

Each decision picks one of: lr x0.5 / x2, dropout +-0.1, weight decay x3 (or 1e-4 from zero) / /3,
keep_current, rollback — uniformly, with values computed from the current knobs so they are usually valid.
"""

from __future__ import annotations

import random
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage

from .protocol import ProtocolChatModel, tool_call


def random_decision(report: dict, rng: random.Random) -> list[dict]:
    lr, dropout, wd = report.get("lr", 1e-3), report.get("dropout"), report.get("weight_decay") or 0.0
    options = [
        ("set_lr", {"lr": lr * 0.5}),
        ("set_lr", {"lr": lr * 2}),
        ("set_weight_decay", {"weight_decay": wd * 3 if wd > 0 else 1e-4}),
        ("set_weight_decay", {"weight_decay": wd / 3}),
        ("keep_current", {}),
        ("rollback", {}),
    ]
    if dropout is not None:
        options += [
            ("set_dropout", {"dropout": round(dropout + 0.1, 4)}),
            ("set_dropout", {"dropout": round(max(0.0, dropout - 0.1), 4)}),
        ]
    name, args = rng.choice(options)
    return [tool_call(name, {**args, "reason": "random policy"})]


class RandomChatModel(ProtocolChatModel):
    seed: int = 0
    _rng: Any = None

    @property
    def _llm_type(self) -> str:
        return "mimic-random"

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        if self._rng is None:
            self._rng = random.Random(self.seed)
        if turn == 0:
            return AIMessage(content="", tool_calls=random_decision(report, self._rng))
        return AIMessage(content="done")
