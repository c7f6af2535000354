"""The local controller's view of a conversation: the chat messages llama.cpp gets, and where a turn stands.

Tool traffic is written as plain text turns (small models' chat templates have no tool role); ``turn_state``
decides whether the model decodes again after tool replies or the turn ends without running it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage


def message_text(message: BaseMessage) -> str:
    return message.text if isinstance(message.content, list) else str(message.content)


def chat_messages(messages: Sequence[BaseMessage], tool_text: str | None, hint: str = "") -> list[dict]:
    """OpenAI-style messages for the GGUF's chat template. Tool traffic is written as plain text turns, since
    small models' templates (SmolLM2's ChatML) have no tool role. ``hint`` ends the last turn: per-call
    instructions go there, not into the system prompt, so the system prompt's KV cache stays valid."""
    out: list[dict] = []
    system = [message_text(m) for m in messages if isinstance(m, SystemMessage)]
    if tool_text:
        system.append(tool_text)
    if system:  # tools first in a stable system prompt, so llama.cpp's prompt cache reuses it across epochs
        out.append({"role": "system", "content": "\n\n".join(system)})
    for message in messages:
        if isinstance(message, SystemMessage):
            continue
        if isinstance(message, AIMessage):
            calls = [{"tool": c["name"], "args": c["args"]} for c in message.tool_calls]
            content = json.dumps(calls[0] if len(calls) == 1 else calls) if calls else message_text(message)
            situation = message.response_metadata.get("situation")
            if calls and situation:  # written back the way it was decoded
                wrapped = {"situation": situation, **calls[0]} if len(calls) == 1 else None
                content = json.dumps(wrapped or {"situation": situation, "calls": calls})
            out.append({"role": "assistant", "content": content})
        elif isinstance(message, ToolMessage):
            kind = "error from" if message.status == "error" else "reply of"
            out.append(
                {
                    "role": "user",
                    "content": f"Tool {kind} {message.name or 'the tool'}: {message_text(message)}",
                }
            )
        else:
            out.append({"role": "user", "content": message_text(message)})
    if hint and out and out[-1]["role"] == "user":
        out[-1]["content"] += "\n\n" + hint
    elif hint:
        out.append({"role": "user", "content": hint})
    return out


def turn_state(messages: Sequence[BaseMessage], max_tool_rounds: int) -> str:
    """Where the current human turn stands: 'decide' (no tool replies yet), 'done' (``max_tool_rounds``
    tool-calling rounds happened: end the turn without running the model), 'error' or 'replied' (the last
    round got replies, some of them errors or none: the model decides again, with the finish option)."""
    if not messages or not isinstance(messages[-1], ToolMessage):
        return "decide"
    rounds, errors = 0, False
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, AIMessage) and message.tool_calls:
            rounds += 1
        if isinstance(message, ToolMessage) and rounds == 0:
            errors = errors or message.status == "error"
    if rounds >= max_tool_rounds:
        return "done"
    return "error" if errors else "replied"


def tool_rounds(messages: Sequence[BaseMessage]) -> int:
    """Tool-calling AI turns since the last human message."""
    count = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        count += isinstance(message, AIMessage) and bool(message.tool_calls)
    return count


def last_round_only(messages: Sequence[BaseMessage], names: set[str]) -> bool:
    """Whether the last AI turn called only tools in ``names``."""
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return bool(message.tool_calls) and all(c["name"] in names for c in message.tool_calls)
        if isinstance(message, HumanMessage):
            return False
    return False
