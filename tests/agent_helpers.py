"""Shared helpers for agent tests: fake chat models and a small runner factory (no network anywhere)."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.training import TrainConfig


class FailingChatModel(BaseChatModel):
    """A provider that always fails (connection refused, 5xx, ...)."""

    error: str = "connection refused"
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "failing"

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.calls += 1
        raise ConnectionError(self.error)


class HangingChatModel(BaseChatModel):
    """A provider that answers far too late."""

    seconds: float = 5.0

    @property
    def _llm_type(self) -> str:
        return "hanging"

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        time.sleep(self.seconds)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="late"))])


def make_runner(
    tmp_path,
    controller: str = "rules",
    epochs: int = 3,
    model=None,
    provider: ProviderOptions | None = None,
    **agent_kwargs,
) -> AgentRunner:
    """A digits runner whose graph state lives in tmp_path. ``model`` replaces the controller's chat model."""
    spec = RunSpec(
        train=TrainConfig(task="digits", epochs=epochs, lr=3e-3),
        controller=controller,
        agent=AgentConfig(**agent_kwargs),
        state_db=str(tmp_path / "graph.sqlite"),
        provider=provider or ProviderOptions(retry_wait=False),
    )
    runner = AgentRunner(spec)
    if model is not None:
        from mimic_learn.graphs.graph import build_graph

        runner.model = model
        runner.graph = build_graph(runner.controls, model, spec.agent, spec.provider, runner.checkpointer)
    return runner
