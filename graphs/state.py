"""The graph's typed state. ``messages`` hold one decision's conversation only; everything else that must
outlive an epoch (memory, the previous decision, run totals) persists through the checkpointer."""

from __future__ import annotations

from typing import Annotated, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class AgentState(TypedDict, total=False):
    # Input at each boundary
    epoch: int
    report: dict  # the trainer's EpochReport (as a dict) plus total_epochs and a compact history
    # the user's notes for this decision ({"id", "text", "time", "source"}); apply clears them
    notes: list[dict]
    # This decision
    messages: Annotated[list[AnyMessage], add_messages]
    reflection: str
    inject: str
    reverted: bool
    tool_calls_used: int
    invalid_calls: int
    refused_calls: int
    fallbacks: list[str]  # why the primary controller was replaced, one entry per fallback
    model_turns: int
    tokens_in: int
    tokens_out: int
    decide_seconds: float  # time spent waiting for the controller
    started_at: float
    decision: dict  # what `apply` committed: changes, kept reasons, calls
    # Persisted across epochs
    memory: list[dict]
    last_decision: dict | None
    total_tokens: int
    reviews: list[
        dict
    ]  # this decision's human reviews (AgentConfig.approve): proposal, action, edits, reason
