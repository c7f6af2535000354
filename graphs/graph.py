"""The controller graph, invoked at every epoch boundary while the trainer is paused.

    observe -> reflect -> decide <-> [review] -> tools -> apply -> END

Nodes: ``graphs/nodes.py``; routers and the budget splitter: ``graphs/routing.py``; the typed state:
``graphs/state.py``; the run-time context (controls, controller, tools, policy, critic): ``graphs/context.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from ..agents.providers import ProviderOptions
from ..tools.controls import TrainerControls
from ..tools.records import Decision
from . import nodes, routing
from .context import AgentConfig, GraphContext, make_context
from .nodes import parse_review
from .routing import split_by_budget
from .state import AgentState

__all__ = ["AgentConfig", "ControllerGraph", "GraphContext", "build_graph", "parse_review", "split_by_budget"]


def build_graph(
    controls: TrainerControls,
    model: BaseChatModel,
    agent: AgentConfig | None = None,
    provider: ProviderOptions | None = None,
    checkpointer=None,
    on_observe: Callable[[int], None] | None = None,
    extra_tools: list | None = None,
    on_decision: Callable[[Decision], None] | None = None,
) -> ControllerGraph:
    """The compiled graph over ``controls`` with ``model`` as the controller. ``on_observe(epoch)`` and
    ``on_decision(decision)`` (at the end of ``apply``) run inside the invocation (e.g. to tag and preview the
    active MLflow trace). ``extra_tools``: LangChain tools bound beside the registered ones (a user loop's
    knobs, ``integrations.knobs``)."""
    context = make_context(controls, model, agent, provider, on_observe, extra_tools, on_decision)
    approve = context.agent.approve
    builder = StateGraph(AgentState, context_schema=GraphContext)
    builder.add_node("observe", nodes.observe)
    builder.add_node("reflect", nodes.reflect)
    builder.add_node("decide", nodes.decide)
    builder.add_node("tools", nodes.run_tools)
    builder.add_node("apply", nodes.apply)
    builder.add_edge(START, "observe")
    builder.add_edge("observe", "reflect")
    builder.add_edge("reflect", "decide")
    after_decide = ["tools", "apply", "review"] if approve else ["tools", "apply"]
    builder.add_conditional_edges("decide", routing.after_decide, after_decide)
    builder.add_conditional_edges("tools", routing.after_tools, ["decide", "apply"])
    if approve:
        builder.add_node("review", nodes.review)
        builder.add_conditional_edges("review", routing.after_review, ["tools", "apply"])
    builder.add_edge("apply", END)
    compiled = builder.compile(checkpointer=checkpointer, name="mimic_controller")
    return ControllerGraph.bound_to(compiled, context)


class ControllerGraph(CompiledStateGraph):
    """The compiled graph with its ``GraphContext`` bound: an invocation without ``context=`` (the runner's,
    LangGraph Studio's as a subgraph) runs with it."""

    def __init__(self, *, default_context: GraphContext | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_context = default_context

    @classmethod
    def bound_to(cls, compiled: CompiledStateGraph, context: GraphContext) -> ControllerGraph:
        attrs = {k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"}
        return cls(default_context=context, **attrs)

    def stream(self, input, config=None, *, context=None, **kwargs):
        return super().stream(input, config, context=context or self.default_context, **kwargs)

    def astream(self, input, config=None, *, context=None, **kwargs):
        return super().astream(input, config, context=context or self.default_context, **kwargs)
