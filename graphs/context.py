"""Run-time configuration of the controller graph: what every node needs besides the state, handed to the nodes
through LangGraph's runtime (``StateGraph(..., context_schema=GraphContext)``; a node takes
``runtime: Runtime[GraphContext]``), as react-agent's ``context.py`` does.

``AgentConfig`` is what a user chooses (prompt, reflection policy, critic, budget, limits); ``GraphContext`` is
that plus the objects one run's graph works with (the trainer's controls, the controller runnable with its one
fallback path, the tool node, the policy, the critic and the observers' hooks), built once by
``make_context``. ``build_graph`` compiles the graph with its context bound, so ``graph.invoke(input, config)``
needs no ``context=`` (one given explicitly wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace
from typing import Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langgraph.prebuilt import ToolNode

from ..agents.providers import ProviderOptions, build_controller, build_fallback
from ..agents.reflection import ReflectionPolicy, get_policy
from ..tools.controls import TrainerControls
from ..tools.records import Decision
from ..tools.registry import as_langchain_tools

CRITICS = ("numbers", "llm")


@dataclass
class AgentConfig:
    prompt: str = "full"
    reflection: str = "log_only"
    budget: int = 8  # tool calls per decision, counted per call
    decision_timeout_s: float = 120.0
    max_tokens_per_decision: int | None = None
    max_tokens_per_run: int | None = None
    # Who writes the reflection's critique, whatever the policy: "numbers" (a verdict from before/after
    # metrics) or "llm" (the controller model, through its retries and fallback; a failure falls back to the
    # numbers' verdict and never ends the run)
    critic: Literal["numbers", "llm"] = "numbers"
    tools: list[str] | None = None  # names of the registered tools to bind (None: all of them)
    approve: bool = False  # a human reviews every proposal that changes something (LangGraph interrupt)
    # The user's instruction: trusted text in every decision's prompt, outside the quoted run data
    # (prompts/templates.py). The rules controller ignores it.
    instruction: str | None = None
    # The earlier spelling of critic="llm" (the CLI's --llm-critic, runs logged with agent.llm_critic)
    llm_critic: InitVar[bool] = False

    def __post_init__(self, llm_critic: bool) -> None:
        if llm_critic:
            self.critic = "llm"
        if self.critic not in CRITICS:
            raise ValueError(f"critic={self.critic!r}: choose one of {', '.join(CRITICS)}")


@dataclass
class GraphContext:
    """Everything the nodes use besides the state; one per compiled graph."""

    controls: TrainerControls
    agent: AgentConfig
    controller: Runnable  # the model with tools bound, retries, the decision timeout and the fallback
    fallback: Runnable | None  # the fallback controller alone: it finishes a decision the primary failed in
    tool_node: ToolNode
    policy: ReflectionPolicy
    critic: Runnable | None = None  # agent.critic == "llm": the model behind the same retries and fallback
    on_observe: Callable[[int], None] | None = None  # observe(epoch), inside the invocation
    on_decision: Callable[[Decision], None] | None = None  # at the end of apply, inside the invocation
    tools: list = field(default_factory=list)


def make_context(
    controls: TrainerControls,
    model: BaseChatModel,
    agent: AgentConfig | None = None,
    provider: ProviderOptions | None = None,
    on_observe: Callable[[int], None] | None = None,
    extra_tools: list | None = None,
    on_decision: Callable[[Decision], None] | None = None,
) -> GraphContext:
    """The context of one run's graph. ``extra_tools``: LangChain tools bound beside the registered ones (a user
    loop's knobs, ``integrations.knobs``)."""
    agent = agent or AgentConfig()
    provider = provider or ProviderOptions()
    tools = as_langchain_tools(controls, agent.tools) + list(extra_tools or [])
    timeout = agent.decision_timeout_s
    critic = None
    if agent.critic == "llm":  # no fallback controller for the critic: a failure leaves the numbers' verdict
        quiet = replace(provider, fallback=None)
        critic = build_controller(model, None, quiet, timeout_s=timeout, answer_always=True)
    return GraphContext(
        controls=controls,
        agent=agent,
        controller=build_controller(model, tools, provider, timeout_s=timeout, answer_always=True),
        fallback=build_fallback(tools, provider),
        tool_node=ToolNode(tools, handle_tool_errors=True),
        policy=get_policy(agent.reflection),
        critic=critic,
        on_observe=on_observe,
        on_decision=on_decision,
        tools=tools,
    )
