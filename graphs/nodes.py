"""The controller graph's nodes. Each takes the state (and LangGraph's ``runtime``, whose ``context`` is the
run's ``GraphContext``) and returns the state update.

* observe  takes the epoch's report and starts a fresh decision (``new_decision()``: earlier epochs' messages
           are dropped; what persists is the reflection policy's memory and the previous decision)
* reflect  the reflection policy judges the previous decision (and may revert it); the critic writes the critique
* decide   the controller runnable (retries, decision timeout, fallback: ``agents.providers.build_controller``)
* tools    LangGraph ToolNode, one call at a time in the model's order (mutations stay ordered); calls beyond the
           budget (``routing.split_by_budget``) are refused before any runs, each with an error ToolMessage
* review   (``AgentConfig.approve``) before tool calls that change something run: ``interrupt()`` with the
           proposed calls; the answer (accept / edit argument values / reject) is recorded in the state's
           ``reviews`` and in the decision. Rejected calls get error ToolMessages and the decision ends.
           The node does nothing before ``interrupt()``, so re-running it on resume is harmless.
* apply    commits the staged decision to the paused trainer and records it (``tools.records.Decision``)
"""

from __future__ import annotations

import time
import uuid

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from ..agents.protocol import human_with_report
from ..agents.reflection import ReflectionContext
from ..prompts.templates import render, system_prompt
from ..tools.controls import TrainerControls
from ..tools.records import (
    BASE_REPORT_KEYS,
    CallRecord,
    Change,
    Decision,
    PreviousDecision,
    Review,
    describe_changes,
    show_value,
)
from . import routing
from .context import AgentConfig, GraphContext
from .state import AgentState, new_decision


def observe(state: AgentState, runtime: Runtime[GraphContext]) -> dict:
    ctx = runtime.context
    ctx.controls.new_decision()
    if ctx.on_observe is not None:
        ctx.on_observe(state["epoch"])
    return dict(new_decision())


def reflect(state: AgentState, runtime: Runtime[GraphContext]) -> dict:
    ctx = runtime.context
    judged = ReflectionContext(
        previous=state.get("last_decision"),
        report=state["report"],
        controls=ctx.controls,
        memory=list(state.get("memory") or []),
        critic=ctx.critic,
        instruction=ctx.agent.instruction,
    )
    outcome = ctx.policy.reflect(judged)
    update = {"reflection": outcome.critique, "inject": outcome.inject, "reverted": outcome.reverted}
    if outcome.memory is not None:
        update["memory"] = outcome.memory
    return update


def decide(state: AgentState, config: RunnableConfig, runtime: Runtime[GraphContext]) -> dict:
    ctx = runtime.context
    new = [] if state.get("messages") else opening_messages(state, ctx.agent)
    messages = [*(state.get("messages") or []), *new]
    fallbacks = list(state.get("fallbacks") or [])
    # Once the primary failed in this decision, the fallback finishes it (no second round of retries).
    runnable = ctx.fallback if (fallbacks and ctx.fallback is not None) else ctx.controller
    start = time.perf_counter()
    ai: AIMessage = runnable.invoke(messages, config)
    elapsed = time.perf_counter() - start
    if ai.response_metadata.get("fallback_reason"):
        fallbacks.append(ai.response_metadata["fallback_reason"])
    usage = getattr(ai, "usage_metadata", None) or {}
    return {
        "messages": new + [ai],
        "model_turns": state.get("model_turns", 0) + 1,
        "tokens_in": state.get("tokens_in", 0) + usage.get("input_tokens", 0),
        "tokens_out": state.get("tokens_out", 0) + usage.get("output_tokens", 0),
        "total_tokens": state.get("total_tokens", 0) + usage.get("total_tokens", 0),
        "decide_seconds": state.get("decide_seconds", 0.0) + elapsed,
        "fallbacks": fallbacks,
    }


def opening_messages(state: AgentState, agent: AgentConfig) -> list[BaseMessage]:
    """The decision's system prompt and the rendered report (which rides along for LLM-free controllers)."""
    report = dict(state["report"])
    last = state.get("last_decision")
    report["previous_decision"] = describe_changes(last["changes"]) if last else None
    text = render(
        agent.prompt,
        report,
        state.get("inject", ""),
        instruction=agent.instruction,
        notes=state.get("notes") or [],
    )
    return [SystemMessage(system_prompt(agent.budget)), human_with_report(text, report)]


def run_tools(state: AgentState, config: RunnableConfig, runtime: Runtime[GraphContext]) -> dict:
    ctx = runtime.context
    budget = ctx.agent.budget
    ai: AIMessage = state["messages"][-1]
    used = state.get("tool_calls_used", 0)
    allowed, refused = routing.split_by_budget(list(ai.tool_calls), budget, used)
    out: list[ToolMessage] = []
    for call in allowed:  # one at a time, in the model's order: staged mutations stay ordered
        result = ctx.tool_node.invoke({"messages": [AIMessage(content="", tool_calls=[call])]}, config)
        out.extend(result["messages"])
    refusal = f"refused: the budget of {budget} tool calls for this decision is spent; nothing changed"
    out += [error_reply(refusal, call["id"], call["name"]) for call in refused]
    for bad in ai.invalid_tool_calls:
        why = bad.get("error") or "arguments are not valid JSON"
        out.append(
            error_reply(
                f"invalid tool call {bad.get('name')!r}: {why}; nothing changed",
                bad.get("id") or f"invalid_{uuid.uuid4().hex[:8]}",
                bad.get("name") or "invalid",
            )
        )
    invalid = sum(m.status == "error" for m in out[: len(allowed)]) + len(ai.invalid_tool_calls)
    return {
        "messages": out,
        "tool_calls_used": used + len(allowed) + len(ai.invalid_tool_calls),
        "invalid_calls": state.get("invalid_calls", 0) + invalid,
        "refused_calls": state.get("refused_calls", 0) + len(refused),
    }


def error_reply(content: str, call_id: str, name: str) -> ToolMessage:
    return ToolMessage(content=content, tool_call_id=call_id, name=name, status="error")


def review(state: AgentState) -> dict:
    ai: AIMessage = state["messages"][-1]
    proposal = [{"index": i, "tool": c["name"], "args": c["args"]} for i, c in enumerate(ai.tool_calls)]
    answer = interrupt({"epoch": state["epoch"], "tool_calls": proposal, "text": str(ai.content)[:500]})
    verdict = parse_review(answer, len(proposal))
    record = Review(epoch=state["epoch"], message_id=ai.id, proposed=proposal, **verdict)
    reviews = [*(state.get("reviews") or []), record]
    if verdict["action"] == "accept":
        return {"reviews": reviews}
    if verdict["action"] == "edit":
        calls = [
            {**call, "args": dict(call["args"]) | verdict["edits"].get(i, {})}
            for i, call in enumerate(ai.tool_calls)
        ]
        edited = AIMessage(content=ai.content, tool_calls=calls, id=ai.id)  # same id: replaces the proposal
        return {"messages": [edited], "reviews": reviews}
    why = verdict.get("reason") or "no reason given"
    rejection = f"rejected by the human reviewer ({why}); nothing changed"
    return {
        "messages": [error_reply(rejection, c["id"], c["name"]) for c in ai.tool_calls],
        "reviews": reviews,
    }


def parse_review(answer, n_calls: int) -> dict:
    """A reviewer's answer -> {"action", "edits", "reason"}. Accepted forms: "accept" / "reject" /
    {"action": "accept"}, {"action": "reject", "reason": "..."}, {"action": "edit", "edits": {index: {arg:
    value}}} (index of the proposed call, as int or str); any of them may carry ``"note": "..."``, a note the
    next decision sees (as with ``mimic-learn note``). Anything else is a malformed answer: recorded as a
    rejection that says so (nothing changes; never a silent accept)."""
    if isinstance(answer, str):
        answer = {"action": answer}
    if not isinstance(answer, dict) or answer.get("action") not in ("accept", "edit", "reject"):
        return {"action": "reject", "edits": {}, "reason": f"malformed review answer {answer!r}"[:300]}
    action = answer["action"]
    edits: dict[int, dict] = {}
    if action == "edit":
        raw = answer.get("edits")
        try:
            edits = {int(k): dict(v) for k, v in (raw or {}).items()}
        except (TypeError, ValueError, AttributeError):
            return {"action": "reject", "edits": {}, "reason": f"malformed edits {raw!r}"[:300]}
        bad = [i for i in edits if not 0 <= i < n_calls]
        if bad or not edits:
            return {
                "action": "reject",
                "edits": {},
                "reason": f"edits name no proposed call (indices {bad or 'none'}; there are {n_calls})",
            }
    verdict = {"action": action, "edits": edits, "reason": str(answer.get("reason") or "")}
    # the reviewer's note for the next decision (AgentRunner queues it)
    if str(answer.get("note") or "").strip():
        verdict["note"] = str(answer["note"]).strip()
    return verdict


def apply(state: AgentState, runtime: Runtime[GraphContext]) -> dict:
    ctx = runtime.context
    changes, kept, error = commit(ctx.controls)
    decision = decision_record(state, changes, kept, error)
    if ctx.on_decision is not None:
        ctx.on_decision(decision)
    return {
        "decision": decision,
        "notes": [],  # seen once: a later invocation without notes must not see them again
        "last_decision": previous_decision(state, changes),
    }


def commit(controls: TrainerControls) -> tuple[list[Change], list[str], str | None]:
    """(changes, kept reasons, error) of committing the staged decision; on an error nothing is applied and the
    run goes on."""
    try:
        result = controls.commit()
    except Exception as exc:
        controls.discard()
        return [], [], f"{type(exc).__name__}: {exc}"
    changes = [
        Change(key=c.key, value=show_value(c.value), reason=c.reason, tool=c.tool) for c in result.applied
    ]
    return changes, result.kept, None


def decision_record(state: AgentState, changes: list[Change], kept: list[str], error: str | None) -> Decision:
    messages = state.get("messages") or []
    final = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    return Decision(
        epoch=state["epoch"],
        changes=changes,
        kept=kept,
        calls=call_records(messages, state["epoch"]),
        commit_error=error,
        final_text=str(final.content)[:500] if final is not None else "",
        reflection=state.get("reflection", ""),
        reverted=bool(state.get("reverted")),
        fallbacks=list(state.get("fallbacks") or []),
        reviews=list(state.get("reviews") or []),
        notes=list(state.get("notes") or []),  # the user's notes this decision saw (once)
    )


def previous_decision(state: AgentState, changes: list[Change]) -> PreviousDecision:
    """What the next boundary's reflection judges. After a revert the decision is judged against the report
    the reverted decision was made on (the state the trainer is back in)."""
    last = state.get("last_decision")
    base = last["base_report"] if (state.get("reverted") and last) else state["report"]
    return PreviousDecision(
        epoch=state["epoch"],  # the boundary whose pre-decision checkpoint undoes this decision
        changes=changes,
        base_report={k: base.get(k) for k in BASE_REPORT_KEYS},
    )


def call_records(messages: list[BaseMessage], epoch: int) -> list[CallRecord]:
    """Every tool call of the decision, paired with its reply."""
    replies = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    calls = []
    ais = [m for m in messages if isinstance(m, AIMessage)]
    for turn, ai in enumerate(ais):
        for call in list(ai.tool_calls) + list(ai.invalid_tool_calls):
            reply = replies.get(call.get("id"))
            calls.append(
                CallRecord(
                    epoch=epoch,
                    turn=turn,
                    tool=call.get("name"),
                    args=call.get("args"),
                    accepted=reply is not None and reply.status != "error",
                    reply=str(reply.content) if reply is not None else "no reply",
                )
            )
    return calls
