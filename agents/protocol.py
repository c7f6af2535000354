"""What a controller sees: the decide node's messages, and where the epoch's report travels.

The report rides on the HumanMessage as ``additional_kwargs["mimic_report"]``. LLM providers do not send
``additional_kwargs`` of a human message to the model, so prompts stay exactly as the template renders
them; LLM-free controllers (``rules``, ``scripted``) read the numbers from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

REPORT_KEY = "mimic_report"


def human_with_report(text: str, report: dict) -> HumanMessage:
    return HumanMessage(content=text, additional_kwargs={REPORT_KEY: report})


def decision_context(messages: Sequence[BaseMessage]) -> tuple[dict, int, list[ToolMessage]]:
    """(report, turn, tool replies since the last AI turn). ``turn`` counts AI messages after the prompt."""
    start = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    report = messages[start].additional_kwargs.get(REPORT_KEY, {}) if start >= 0 else {}
    after = list(messages[start + 1 :])
    turn = sum(isinstance(m, AIMessage) for m in after)
    last_ai = max((i for i, m in enumerate(after) if isinstance(m, AIMessage)), default=-1)
    replies = [m for m in after[last_ai + 1 :] if isinstance(m, ToolMessage)]
    return report, turn, replies


def tool_call(name: str, args: dict) -> dict:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


class ProtocolChatModel(BaseChatModel):
    """Base of the LLM-free controllers (rules, scripted, random): they read the report beside the prompt and
    answer each turn of a decision with tool calls (or none, to end it). Tools need no binding."""

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:  # pragma: no cover
        raise NotImplementedError

    def _generate(
        self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any
    ) -> ChatResult:
        message = self.decide(*decision_context(messages))
        message.response_metadata = {
            "controller": self._llm_type.removeprefix("mimic-"),
            **message.response_metadata,
        }
        return ChatResult(generations=[ChatGeneration(message=message)])
