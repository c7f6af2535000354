"""``oracle[:h]``: at each boundary, try every candidate action in shadow for h epochs and commit the best by the
validation monitor (never test). A greedy h-step reference, not an upper bound.

    mimic-learn run --task digits --controller oracle:end     # roll each candidate out to the end of the run
    mimic-learn run --task digits --controller oracle:1       # the myopic reference (next epoch only)

The rollouts need the paused trainer, which a chat model does not have: ``AgentRunner`` plans the decision
before it invokes the graph (``graphs.counterfactual.plan_oracle``: candidates from ``tools.candidates``, one
shadow branch each) and hands the winner to this model, which emits it as tool calls like every other
controller; the graph's tools and apply node commit it. ``oracle`` alone means ``oracle:end`` on a cheap task
(at most ``CHEAP_TRAIN_SIZE`` training examples) and ``oracle:5`` otherwise.

Compute: candidates x horizon epochs per decision (``oracle:end`` at boundary e of T: candidates x (T - e)).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, ToolMessage

from .protocol import ProtocolChatModel, tool_call

CHEAP_TRAIN_SIZE = 2000
DEFAULT_HORIZON_EXPENSIVE = 5


def parse_oracle(spec: str) -> int | str | None:
    """The horizon of an ``oracle[:h]`` controller string: an int >= 1, "end", or None (the task decides)."""
    if spec == "oracle":
        return None
    text = spec.removeprefix("oracle:")
    if text == "end":
        return "end"
    try:
        horizon = int(text)
    except ValueError:
        horizon = 0
    if horizon < 1:
        raise ValueError(
            f"controller {spec!r}: the oracle horizon must be 'end' or an integer >= 1 (oracle:end, oracle:5); "
            f"got {text!r}"
        )
    return horizon


class OracleChatModel(ProtocolChatModel):
    horizon: int | str | None = None  # see parse_oracle
    plans: dict[int, list[dict]] = {}  # epoch -> the winning candidate's tool calls (set by the runner)
    chosen: dict[int, str] = {}  # epoch -> the winning candidate's name

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.plans, self.chosen = {}, {}  # per instance

    @property
    def _llm_type(self) -> str:
        return "mimic-oracle"

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        epoch = int(report.get("epoch", -1))
        if turn > 0:
            errors = [r.content for r in replies if r.status == "error"]
            return AIMessage(content="done" if not errors else f"done; rejected: {errors[0]}")
        calls = self.plans.get(epoch)
        if calls is None:
            return AIMessage(
                content="the oracle has no plan for this epoch (only AgentRunner can roll candidates out); "
                "nothing changes"
            )
        name = self.chosen.get(epoch, "?")
        return AIMessage(
            content=f"oracle: best candidate {name}",
            tool_calls=[tool_call(c["name"], c["args"]) for c in calls],
        )
