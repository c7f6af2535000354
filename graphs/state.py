"""The graph's typed state. ``messages`` hold one decision's conversation only; everything else that must
outlive an epoch (memory, the previous decision, run totals) persists through the checkpointer.

The state is flat (readers such as the runner and tracking read ``state["fallbacks"]``), but its fields come in
three groups: the input of a boundary, one decision's working fields (``DecisionFields``: ``observe`` resets
them all at once to ``new_decision()``), and what persists across epochs.
"""

from __future__ import annotations

import time
from typing import Annotated, TypedDict

from langchain_core.messages import AnyMessage, RemoveMessage
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages

from ..tools.records import Decision, PreviousDecision, Review


class BoundaryInput(TypedDict, total=False):
    """What the runner passes at each boundary."""

    epoch: int
    report: dict  # the trainer's EpochReport (as a dict) plus total_epochs and a compact history
    notes: list[
        dict
    ]  # the user's notes for this decision ({"id", "text", "time", "source"}); apply clears them


class DecisionFields(TypedDict, total=False):
    """One decision's working fields; ``new_decision()`` gives each its starting value."""

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
    reviews: list[Review]  # this decision's human reviews (AgentConfig.approve)


class AgentState(BoundaryInput, DecisionFields, total=False):
    decision: Decision  # what `apply` committed
    # Persisted across epochs
    memory: list[dict]
    last_decision: PreviousDecision | None
    total_tokens: int


def new_decision() -> DecisionFields:
    """Every ``DecisionFields`` field at its start: no messages (earlier epochs' are dropped), no counts."""
    return DecisionFields(
        messages=[RemoveMessage(id=REMOVE_ALL_MESSAGES)],
        reflection="",
        inject="",
        reverted=False,
        tool_calls_used=0,
        invalid_calls=0,
        refused_calls=0,
        fallbacks=[],
        model_turns=0,
        tokens_in=0,
        tokens_out=0,
        decide_seconds=0.0,
        started_at=time.time(),
        reviews=[],
    )
