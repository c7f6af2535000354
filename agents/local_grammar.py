"""The constrained-decoding grammar of the local controller: pure functions, no model.

The bound tools become one JSON schema (``call_schema``) that only admits ``{"tool": <name>, "args": {...}}``;
knob arguments are narrowed to a few currently valid values (``with_live_bounds``, ``candidate_values``); the
decoded JSON becomes LangChain tool calls (``tool_calls_from_json``); ``describe_tools`` writes the tool list of
the system prompt. ``agents/local.py`` explains why decoding is constrained.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall

from ..training.knobs import multiplicative

FINISH_TOOL = "finish_turn"
# What ``diagnose=True`` makes the model name before its call: kinds of training situation, not actions.
SITUATIONS = ("diverging", "unstable", "overfitting", "underfitting", "plateau", "improving")
# LLGuidance rejects unknown string formats and some regex features, and a grammar that fails to compile is
# silently dropped by llama.cpp (decoding then runs unconstrained), so the schema we send leaves these out.
_DROPPED_KEYS = {
    "title",
    "default",
    "examples",
    "format",
    "pattern",
    "$schema",
    "$id",
    "$comment",
    "readOnly",
}
# Compact JSON (one space after ',' and ':') instead of the model's habit of pretty-printing: ~30% fewer tokens.
_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def sendable_schema(schema: Any, max_string_chars: int) -> Any:
    """A copy of a tool's argument schema that LLGuidance compiles: no titles/defaults/formats/patterns,
    ``oneOf`` read as ``anyOf``, objects closed (``additionalProperties: false`` unless given) and strings capped
    at ``max_string_chars`` so a small model cannot ramble past ``max_tokens``. The tool itself is untouched and
    still validates the call."""
    if isinstance(schema, list):
        return [sendable_schema(item, max_string_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):  # property names are data, not keywords
            out[key] = {name: sendable_schema(sub, max_string_chars) for name, sub in value.items()}
            continue
        out["anyOf" if key == "oneOf" else key] = sendable_schema(value, max_string_chars)
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        out["maxLength"] = min(out.get("maxLength", max_string_chars), max_string_chars)
    return out


def call_schema(
    tools: Sequence[dict],
    max_calls: int,
    offer_finish: bool,
    max_string_chars: int,
    situations: Sequence[str] = (),
) -> dict:
    """The JSON schema of one decision: a call of one of ``tools`` (OpenAI tool dicts), or a list of them.

    ``situations``: the decision starts with ``"situation": <one of them>`` (decoded first, so the call is
    conditioned on it): ``{"situation": ..., "tool": ..., "args": {...}}``, or ``{"situation": ..., "calls":
    [...]}`` with ``max_calls > 1``."""
    options = []
    for tool in tools:
        function = tool["function"]
        args = function.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"const": function["name"]},
                    "args": sendable_schema(args, max_string_chars),
                },
                "required": ["tool", "args"],
                "additionalProperties": False,
            }
        )
    if offer_finish:
        options.append(
            {
                "type": "object",
                "properties": {"tool": {"const": FINISH_TOOL}},
                "required": ["tool"],
                "additionalProperties": False,
            }
        )
    situation = {"situation": {"enum": list(situations)}} if situations else {}
    if situations and max_calls <= 1:  # the situation goes first in every option
        options = [
            {
                **o,
                "properties": {**situation, **o["properties"]},
                "required": ["situation", *o["required"]],
            }
            for o in options
        ]
    one = options[0] if len(options) == 1 else {"anyOf": options}
    schema = one if max_calls <= 1 else {"type": "array", "items": one, "minItems": 1, "maxItems": max_calls}
    if situations and max_calls > 1:
        schema = {
            "type": "object",
            "properties": {**situation, "calls": schema},
            "required": ["situation", "calls"],
            "additionalProperties": False,
        }
    return {**schema, "x-guidance": _COMPACT_JSON}


def tool_calls_from_json(text: str) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Turn decoded ``{"tool", "args"}`` JSON (one object or a list) into LangChain tool calls.

    Values are passed through exactly as decoded: range checks belong to the tools, whose error message tells
    the model the allowed range. ``finish_turn`` entries are dropped (they end the turn)."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        error = f"the local model's output is not complete JSON ({exc}); raise max_tokens if it was cut off"
        return [], [
            InvalidToolCall(name=None, args=text, id=_call_id(), error=error, type="invalid_tool_call")
        ]
    if isinstance(decoded, dict) and isinstance(decoded.get("calls"), list):  # {"situation", "calls"}
        decoded = decoded["calls"]
    calls, invalid = [], []
    for item in decoded if isinstance(decoded, list) else [decoded]:
        if isinstance(item, dict) and item.get("tool") == FINISH_TOOL:
            continue
        if (
            isinstance(item, dict)
            and isinstance(item.get("tool"), str)
            and isinstance(item.get("args"), dict)
        ):
            calls.append(ToolCall(name=item["tool"], args=item["args"], id=_call_id(), type="tool_call"))
        else:
            error = 'expected {"tool": <name>, "args": {...}}'
            invalid.append(
                InvalidToolCall(
                    name=None, args=json.dumps(item), id=_call_id(), error=error, type="invalid_tool_call"
                )
            )
    return calls, invalid


def situation_from_json(text: str) -> str | None:
    """The ``situation`` a diagnosing decision named first, or None."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError:
        return None
    situation = decoded.get("situation") if isinstance(decoded, dict) else None
    return situation if isinstance(situation, str) else None


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def describe_tools(
    tools: Sequence[dict], max_calls: int, short: bool = False, situations: Sequence[str] = ()
) -> str:
    """The tool list of the system prompt. ``short``: each tool's first sentence and argument names only."""
    shape = '{"tool": <tool name>, "args": {<arguments>}}'
    reply = (
        f"a JSON list of 1 to {max_calls} calls, each {shape}" if max_calls > 1 else f"one JSON call {shape}"
    )
    if situations:
        first = f'"situation": <one of {", ".join(situations)}>'
        reply = (
            f'{{{first}, "calls": [1 to {max_calls} calls, each {shape}]}}'
            if max_calls > 1
            else f'{{{first}, "tool": <tool name>, "args": {{<arguments>}}}}'
        )
        reply = "one JSON object " + reply + ": first name the training situation, then call a tool"
    lines = [f"You act only by calling tools. Reply with {reply}. Tools:"]
    for tool in tools:
        function = tool["function"]
        props = (function.get("parameters") or {}).get("properties", {})
        description = function.get("description", "").strip()
        if short:
            description = " ".join(description.split()).split(". ")[0].rstrip(".") + "."
            args = ", ".join(props)
        else:
            args = "; ".join(
                f"{name} ({spec.get('type', 'value')}){': ' + spec['description'] if spec.get('description') else ''}"
                for name, spec in props.items()
            )
        lines.append(f"- {function['name']}: {description} Arguments: {args or 'none'}.")
    return "\n".join(lines)


def candidate_values(low: float, high: float, current: float, multiplicative: bool) -> list[float]:
    """A few valid values around ``current``: x0.1 ... x10 for rates, +-0.1 ... 0.3 steps for probabilities."""
    if multiplicative:
        raw = (
            [current * f for f in (0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 10.0)]
            if current > 0
            else [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
        )
    else:
        raw = [current + d for d in (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3)]
    values = sorted({float(f"{v:.3g}") for v in raw})
    return [v for v in values if low <= v <= high] or [current]


def with_live_bounds(tools: list[dict], live: dict) -> list[dict]:
    """Copies of the OpenAI tool dicts whose knob arguments may only take a few currently valid values.

    llama.cpp's JSON-schema grammar enforces ``enum`` but not ``minimum``/``maximum`` on floats, so the
    current range (trust region included) becomes a short list of candidates around the current value."""
    out = []
    for tool in tools:
        bounds = live[tool["function"]["name"]]() if tool["function"]["name"] in live else {}
        if not bounds:
            out.append(tool)
            continue
        function = dict(tool["function"])
        params = dict(function.get("parameters") or {})
        props = {k: dict(v) for k, v in (params.get("properties") or {}).items()}
        for arg, (low, high, current) in bounds.items():
            if arg in props:
                props[arg] = {
                    "type": "number",
                    "enum": candidate_values(low, high, current, multiplicative=multiplicative(arg)),
                }
        function["parameters"] = {**params, "properties": props}
        out.append({**tool, "function": function})
    return out
