"""The graph's branch points, one typed router each, and the budget splitter the ``tools`` node uses.

decide -> after_decide -> tools | review | apply
tools  -> after_tools  -> decide | apply
review -> after_review -> tools | apply
"""

from __future__ import annotations

import time
from typing import Literal

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from ..tools.registry import REGISTRY
from .context import AgentConfig, GraphContext
from .state import AgentState


def after_decide(state: AgentState, runtime: Runtime[GraphContext]) -> Literal["tools", "review", "apply"]:
    """Tool calls go to ``tools`` (through ``review`` first when a human approves changes); none: ``apply``."""
    ai: AIMessage = state["messages"][-1]
    if not (ai.tool_calls or ai.invalid_tool_calls):
        return "apply"
    if runtime.context.agent.approve and changes_something(ai) and not reviewed(state, ai):
        return "review"
    return "tools"


def after_tools(state: AgentState, runtime: Runtime[GraphContext]) -> Literal["decide", "apply"]:
    """Back to ``decide`` while calls, time, tokens and turns remain; otherwise ``apply``."""
    return "apply" if decision_spent(state, runtime.context.agent) else "decide"


def after_review(state: AgentState) -> Literal["tools", "apply"]:
    """An accepted or edited proposal runs; a rejected one (its calls already answered) ends the decision."""
    return "apply" if state["reviews"][-1]["action"] == "reject" else "tools"


def decision_spent(state: AgentState, agent: AgentConfig) -> bool:
    """The decision's limits: the tool-call budget, the decision timeout, the token caps, the model turns."""
    out_of_budget = state.get("tool_calls_used", 0) >= agent.budget
    out_of_time = time.time() - state.get("started_at", time.time()) > agent.decision_timeout_s
    tokens = state.get("tokens_in", 0) + state.get("tokens_out", 0)
    out_of_tokens = (agent.max_tokens_per_decision and tokens >= agent.max_tokens_per_decision) or (
        agent.max_tokens_per_run and state.get("total_tokens", 0) >= agent.max_tokens_per_run
    )
    too_many_turns = state.get("model_turns", 0) > agent.budget + 1
    return bool(out_of_budget or out_of_time or out_of_tokens or too_many_turns)


def split_by_budget(calls: list, budget: int, used: int) -> tuple[list, list]:
    """The budget guard: (calls that may run, calls refused) when ``used`` of ``budget`` calls are spent."""
    remaining = max(0, budget - used)
    return calls[:remaining], calls[remaining:]


def changes_something(ai: AIMessage) -> bool:
    """Whether a proposal needs review: any call of a mutating (or unknown) tool."""
    return any(getattr(REGISTRY.get(c["name"]), "mutating", True) for c in ai.tool_calls)


def reviewed(state: AgentState, ai: AIMessage) -> bool:
    """The last review was of this very message (after an edit the replaced message goes to tools)."""
    reviews = state.get("reviews") or []
    return bool(reviews) and reviews[-1].get("message_id") == ai.id
