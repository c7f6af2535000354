"""``constant:<action>``: the same action at every boundary, whatever the numbers say: a benchmark anchor.

    mimic-learn eval-controller --controller constant:lr_down --controller rules

A controller that reads the report must beat every one of these. Actions (values match the oracle's candidates
in ``tools.candidates``, so a constant decision is scored from the outcome bank without a new rollout):

    keep        keep_current
    lr_down     set_lr lr x 0.3
    lr_up       set_lr lr x 3
    dropout_up  set_dropout dropout + 0.1 (rejected by the tool on a model without dropout)
    wd_up       set_weight_decay x 10 (1e-4 from 0)
    rollback    rollback (rejected when there is nothing to undo)
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, ToolMessage

from .protocol import ProtocolChatModel, tool_call

REASON = "constant policy"


def _call(action: str, report: dict) -> dict:
    lr, dropout, wd = report.get("lr") or 1e-3, report.get("dropout"), report.get("weight_decay") or 0.0
    calls = {
        "keep": ("keep_current", {}),
        "lr_down": ("set_lr", {"lr": lr * 0.3}),
        "lr_up": ("set_lr", {"lr": lr * 3.0}),
        "dropout_up": ("set_dropout", {"dropout": round((dropout or 0.0) + 0.1, 4)}),
        "wd_up": ("set_weight_decay", {"weight_decay": wd * 10 if wd > 0 else 1e-4}),
        "rollback": ("rollback", {}),
    }
    name, args = calls[action]
    return tool_call(name, {**args, "reason": REASON})


ACTIONS = ("keep", "lr_down", "lr_up", "dropout_up", "wd_up", "rollback")


class ConstantChatModel(ProtocolChatModel):
    action: str = "keep"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.action not in ACTIONS:
            raise ValueError(f"constant:{self.action}: the action must be one of {', '.join(ACTIONS)}")

    @property
    def _llm_type(self) -> str:
        return "mimic-constant"

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        if turn == 0:
            return AIMessage(content="", tool_calls=[_call(self.action, report)])
        errors = [r.content for r in replies if r.status == "error"]
        return AIMessage(content="done" if not errors else f"done; rejected: {errors[0]}")
