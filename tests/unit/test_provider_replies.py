"""``explain_empty_reply``: which empty replies get a reason in the decisions table, and which stay as they are."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from mimic_learn.agents.providers import explain_empty_reply


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (AIMessage(content="", additional_kwargs={"refusal": "no"}), "[the provider refused: no]"),
        (
            AIMessage(content="", response_metadata={"finish_reason": "content_filter"}),
            "[the provider's content filter stopped the reply (finish_reason=content_filter)]",
        ),
        (
            AIMessage(content="", response_metadata={"finish_reason": "length"}),
            "[the reply hit the output token limit before any tool call (finish_reason=length)]",
        ),
        (
            AIMessage(content="", response_metadata={"prompt_feedback": {"block_reason": "SAFETY"}}),
            "[the provider blocked the prompt (block_reason=SAFETY)]",
        ),
        # ordinary replies stay as they are: an empty closing turn, text, a tool call
        (AIMessage(content="", response_metadata={"finish_reason": "stop"}), ""),
        (
            AIMessage(content="lowered lr", response_metadata={"finish_reason": "content_filter"}),
            "lowered lr",
        ),
        (
            AIMessage(
                content="",
                tool_calls=[{"name": "keep_current", "args": {"reason": "x"}, "id": "1"}],
                response_metadata={"finish_reason": "length"},
            ),
            "",
        ),
    ],
)
def test_explain_empty_reply(message, text):
    assert explain_empty_reply(message).content == text
