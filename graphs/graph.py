"""The controller graph, invoked at every epoch boundary while the trainer is paused.

    observe -> reflect -> decide <-> [review] -> tools -> apply -> END
                            |____________________________^   (route: tool calls? budget left?)

* observe  takes the epoch's report and starts a fresh decision (earlier epochs' messages are dropped;
           what persists is the reflection policy's memory and the previous decision)
* reflect  the reflection policy judges the previous decision (and may revert it)
* decide   the chat model with the tools bound (retries, fallback, a decision timeout)
* tools    LangGraph ToolNode, one call at a time in the model's order (mutations stay ordered); calls
           beyond the budget are refused before any runs, each with an error ToolMessage
* review   (``AgentConfig.approve``) before tool calls that change something run: ``interrupt()`` with the
           proposed calls; the answer (accept / edit argument values / reject) is recorded in the state's
           ``reviews`` and in the decision. Rejected calls get error ToolMessages and the decision ends.
           The node does nothing before ``interrupt()``, so re-running it on resume is harmless.
* apply    commits the staged decision to the paused trainer
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, RemoveMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

from ..agents.protocol import human_with_report
from ..agents.providers import (
    ProviderOptions,
    ProviderResponseError,
    RetryAfterTooLong,
    build_controller,
    load_chat_model,
)
from ..agents.reflection import ReflectionContext, get_policy
from ..agents.reflection.base import describe_changes
from ..prompts.templates import render, system_prompt
from ..tools.controls import TrainerControls, _show
from ..tools.registry import REGISTRY, as_langchain_tools
from .state import AgentState


@dataclass
class AgentConfig:
    prompt: str = "full"
    reflection: str = "log_only"
    budget: int = 8  # tool calls per decision, counted per call
    decision_timeout_s: float = 120.0
    max_tokens_per_decision: int | None = None
    max_tokens_per_run: int | None = None
    llm_critic: bool = False  # let the controller model write the reflection's critique
    tools: list[str] | None = None  # names of the registered tools to bind (None: all of them)
    approve: bool = False  # a human reviews every proposal that changes something (LangGraph interrupt)
    # The user's instruction: trusted text in every decision's prompt, outside the quoted run data
    # (prompts/templates.py). The rules controller ignores it.
    instruction: str | None = None


class _ErrorCollector(BaseCallbackHandler):
    """Collects provider errors seen during one decide call (retries and the failure before a fallback)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_llm_error(self, error: BaseException, **kwargs) -> None:
        self.errors.append(f"{type(error).__name__}: {error}"[:300])

    def on_chain_error(self, error: BaseException, **kwargs) -> None:
        # Retries given up early because the provider asked to wait longer than allowed: the reason to record
        # is the wait it asked for, which only the retry wrapper knows (the model's own error is the 429).
        text = f"{type(error).__name__}: {error}"[:300]
        if isinstance(error, RetryAfterTooLong | ProviderResponseError) and text not in self.errors:
            self.errors.append(text)


def _invoke_with_timeout(runnable, messages, config: RunnableConfig, timeout_s: float):
    pool = ContextThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(runnable.invoke, messages, config).result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung provider call is abandoned, not awaited


def split_by_budget(calls: list, budget: int, used: int) -> tuple[list, list]:
    """The budget guard: (calls that may run, calls refused) when ``used`` of ``budget`` calls are spent."""
    remaining = max(0, budget - used)
    return calls[:remaining], calls[remaining:]


def _decision_record(messages: list, epoch: int) -> list[dict]:
    """Every tool call of the decision, paired with its reply."""
    replies = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    calls = []
    turn = -1
    for m in messages:
        if not isinstance(m, AIMessage):
            continue
        turn += 1
        for call in list(m.tool_calls) + list(m.invalid_tool_calls):
            reply = replies.get(call.get("id"))
            calls.append(
                {
                    "epoch": epoch,
                    "turn": turn,
                    "tool": call.get("name"),
                    "args": call.get("args"),
                    "accepted": reply is not None and reply.status != "error",
                    "reply": str(reply.content) if reply is not None else "no reply",
                }
            )
    return calls


def build_graph(
    controls: TrainerControls,
    model: BaseChatModel,
    agent: AgentConfig | None = None,
    provider: ProviderOptions | None = None,
    checkpointer=None,
    on_observe=None,
    extra_tools: list | None = None,
    on_decision=None,
):
    """``on_observe(epoch)`` and ``on_decision(decision)`` (at the end of ``apply``) run inside the invocation
    (e.g. to tag and preview the active MLflow trace). ``extra_tools``: LangChain tools bound beside the
    registered ones (a user loop's knobs, ``integrations.knobs``)."""
    agent = agent or AgentConfig()
    provider = provider or ProviderOptions()
    tools = as_langchain_tools(controls, agent.tools) + list(extra_tools or [])
    controller = build_controller(model, tools, provider)
    fallback_runnable = (
        load_chat_model(provider.fallback, provider).bind_tools(tools) if provider.fallback else None
    )
    tool_node = ToolNode(tools, handle_tool_errors=True)
    policy = get_policy(agent.reflection)
    critic = model if agent.llm_critic else None

    def observe(state: AgentState) -> dict:
        controls.new_decision()
        if on_observe is not None:
            on_observe(state["epoch"])
        return {
            "messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES)],
            "tool_calls_used": 0,
            "invalid_calls": 0,
            "refused_calls": 0,
            "fallbacks": [],
            "model_turns": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "decide_seconds": 0.0,
            "started_at": time.time(),
            "reverted": False,
            "inject": "",
            "reviews": [],
        }

    def reflect(state: AgentState) -> dict:
        ctx = ReflectionContext(
            previous=state.get("last_decision"),
            report=state["report"],
            controls=controls,
            memory=list(state.get("memory") or []),
            critic=critic,
            instruction=agent.instruction,
        )
        outcome = policy.reflect(ctx)
        update = {"reflection": outcome.critique, "inject": outcome.inject, "reverted": outcome.reverted}
        if outcome.memory is not None:
            update["memory"] = outcome.memory
        return update

    def decide(state: AgentState, config: RunnableConfig) -> dict:
        new = []
        if not state.get("messages"):
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
            new = [SystemMessage(system_prompt(agent.budget)), human_with_report(text, report)]
        messages = list(state.get("messages") or []) + new
        collector = _ErrorCollector()
        cfg = {**config, "callbacks": _with_handler(config.get("callbacks"), collector)}
        fallbacks = list(state.get("fallbacks") or [])
        # Once the primary failed in this decision, the fallback finishes it (no second round of retries).
        runnable = fallback_runnable if (fallbacks and fallback_runnable is not None) else controller
        start = time.perf_counter()
        try:
            ai = _invoke_with_timeout(runnable, messages, cfg, agent.decision_timeout_s)
        except Exception as exc:  # timeout, or a failure with no fallback configured
            reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            fallbacks.append(f"controller failed ({reason})")
            if fallback_runnable is not None:
                ai = fallback_runnable.invoke(messages, config)
            else:
                ai = AIMessage(
                    content=f"controller failed ({reason}); no fallback configured, nothing changes"
                )
        elapsed = time.perf_counter() - start
        if ai.response_metadata.get("fallback"):
            fallbacks.append(
                "fell back to "
                + str(provider.fallback)
                + ": "
                + ("; ".join(collector.errors) or "provider error")
            )
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

    def run_tools(state: AgentState, config: RunnableConfig) -> dict:
        ai: AIMessage = state["messages"][-1]
        used = state.get("tool_calls_used", 0)
        allowed, refused = split_by_budget(list(ai.tool_calls), agent.budget, used)
        out: list[ToolMessage] = []
        for call in allowed:  # one at a time, in the model's order: staged mutations stay ordered
            result = tool_node.invoke({"messages": [AIMessage(content="", tool_calls=[call])]}, config)
            out.extend(result["messages"])
        for call in refused:
            out.append(
                ToolMessage(
                    content=f"refused: the budget of {agent.budget} tool calls for this decision is spent; nothing changed",
                    tool_call_id=call["id"],
                    name=call["name"],
                    status="error",
                )
            )
        for bad in ai.invalid_tool_calls:
            out.append(
                ToolMessage(
                    content=f"invalid tool call {bad.get('name')!r}: {bad.get('error') or 'arguments are not valid JSON'}; nothing changed",
                    tool_call_id=bad.get("id") or f"invalid_{uuid.uuid4().hex[:8]}",
                    name=bad.get("name") or "invalid",
                    status="error",
                )
            )
        invalid = sum(m.status == "error" for m in out[: len(allowed)]) + len(ai.invalid_tool_calls)
        return {
            "messages": out,
            "tool_calls_used": used + len(allowed) + len(ai.invalid_tool_calls),
            "invalid_calls": state.get("invalid_calls", 0) + invalid,
            "refused_calls": state.get("refused_calls", 0) + len(refused),
        }

    def review(state: AgentState) -> dict:
        ai: AIMessage = state["messages"][-1]
        proposal = [{"index": i, "tool": c["name"], "args": c["args"]} for i, c in enumerate(ai.tool_calls)]
        answer = interrupt({"epoch": state["epoch"], "tool_calls": proposal, "text": str(ai.content)[:500]})
        verdict = parse_review(answer, len(proposal))
        record = {"epoch": state["epoch"], "message_id": ai.id, "proposed": proposal, **verdict}
        reviews = [*(state.get("reviews") or []), record]
        if verdict["action"] == "accept":
            return {"reviews": reviews}
        if verdict["action"] == "edit":
            calls = []
            for i, call in enumerate(ai.tool_calls):
                args = dict(call["args"]) | verdict["edits"].get(i, {})
                calls.append({**call, "args": args})
            edited = AIMessage(
                content=ai.content, tool_calls=calls, id=ai.id
            )  # same id: replaces the proposal
            return {"messages": [edited], "reviews": reviews}
        why = verdict.get("reason") or "no reason given"
        rejected = [
            ToolMessage(
                content=f"rejected by the human reviewer ({why}); nothing changed",
                tool_call_id=c["id"],
                name=c["name"],
                status="error",
            )
            for c in ai.tool_calls
        ]
        return {"messages": rejected, "reviews": reviews}

    def apply(state: AgentState) -> dict:
        error = None
        try:
            result = controls.commit()
            changes = [
                {"key": c.key, "value": _show(c.value), "reason": c.reason, "tool": c.tool}
                for c in result.applied
            ]
            kept = result.kept
        except Exception as exc:  # nothing is applied; the run goes on
            controls.discard()
            error, changes, kept = f"{type(exc).__name__}: {exc}", [], []
        messages = state.get("messages") or []
        final = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        report = state["report"]
        reverted = state.get("reverted") and state.get("last_decision")
        base = state["last_decision"]["base_report"] if reverted else report
        decision = {
            "epoch": state["epoch"],
            "changes": changes,
            "kept": kept,
            "calls": _decision_record(messages, state["epoch"]),
            "commit_error": error,
            "final_text": str(final.content)[:500] if final is not None else "",
            "reflection": state.get("reflection", ""),
            "reverted": bool(state.get("reverted")),
            "fallbacks": list(state.get("fallbacks") or []),
            "reviews": list(state.get("reviews") or []),
            "notes": list(state.get("notes") or []),  # the user's notes this decision saw (once)
        }
        if on_decision is not None:
            on_decision(decision)
        return {
            "decision": decision,
            "notes": [],  # seen once: a later invocation without notes must not see them again
            "last_decision": {
                "epoch": state["epoch"],  # the boundary whose pre-decision checkpoint undoes this decision
                "changes": changes,
                "base_report": {
                    k: base.get(k)
                    for k in ("epoch", "val_acc", "val_loss", "train_loss", "metrics", "monitor", "mode")
                },
            },
        }

    def route(state: AgentState) -> str:
        """The one router: after decide -> tools if the model called any; after tools -> decide while budget,
        tokens and time remain; otherwise -> apply."""
        last = state["messages"][-1]
        if isinstance(last, AIMessage):
            if not (last.tool_calls or last.invalid_tool_calls):
                return "apply"
            if agent.approve and _changes_something(last) and not _reviewed(state, last):
                return "review"
            return "tools"
        if state.get("reviews") and state["reviews"][-1]["action"] == "reject":
            return "apply"
        out_of_budget = state.get("tool_calls_used", 0) >= agent.budget
        out_of_time = time.time() - state.get("started_at", time.time()) > agent.decision_timeout_s
        tokens = state.get("tokens_in", 0) + state.get("tokens_out", 0)
        out_of_tokens = (agent.max_tokens_per_decision and tokens >= agent.max_tokens_per_decision) or (
            agent.max_tokens_per_run and state.get("total_tokens", 0) >= agent.max_tokens_per_run
        )
        too_many_turns = state.get("model_turns", 0) > agent.budget + 1
        return "apply" if (out_of_budget or out_of_time or out_of_tokens or too_many_turns) else "decide"

    builder = StateGraph(AgentState)
    builder.add_node("observe", observe)
    builder.add_node("reflect", reflect)
    builder.add_node("decide", decide)
    builder.add_node("tools", run_tools)
    builder.add_node("apply", apply)
    builder.add_edge(START, "observe")
    builder.add_edge("observe", "reflect")
    builder.add_edge("reflect", "decide")
    builder.add_conditional_edges(
        "decide", route, ["tools", "apply", "review"] if agent.approve else ["tools", "apply"]
    )
    builder.add_conditional_edges("tools", route, ["decide", "apply"])
    if agent.approve:
        builder.add_node("review", review)
        builder.add_conditional_edges("review", route, ["tools", "apply"])
    builder.add_edge("apply", END)
    return builder.compile(checkpointer=checkpointer, name="mimic_controller")


def _with_handler(callbacks, handler: BaseCallbackHandler):
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, list):
        return [*callbacks, handler]
    manager = callbacks.copy()
    manager.add_handler(handler, inherit=True)
    return manager


def _changes_something(ai: AIMessage) -> bool:
    """Whether a proposal needs review: any call of a mutating (or unknown) tool."""
    return any(getattr(REGISTRY.get(c["name"]), "mutating", True) for c in ai.tool_calls)


def _reviewed(state: AgentState, ai: AIMessage) -> bool:
    """The last review was of this very message (after an edit the replaced message goes to tools)."""
    reviews = state.get("reviews") or []
    return bool(reviews) and reviews[-1].get("message_id") == ai.id


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
