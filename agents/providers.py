"""Controllers chosen by one string.

    rules                               deterministic LLM-free policy (agents/rules.py)
    scripted:<file.yaml|json>           replay tool calls from a file (agents/scripted.py)
    random[:seed]                       a seeded random policy (agents/random_policy.py), the floor to beat
    oracle[:h|:end]                     tries every candidate action in shadow for h epochs and commits the best
                                        by validation (agents/oracle.py; needs AgentRunner's trainer)
    local[:<file.gguf>]                 the embedded offline LLM (SmolLM2-135M by default; agents/local.py)
    local:adapter=<dir|file.gguf>       ... with a LoRA adapter from `mimic-learn train-controller`
    openai:gpt-4o, google_genai:gemini-2.5-flash, anthropic:..., ...
                                        any provider ``init_chat_model`` knows (keys from the environment)
    openai-compatible:<model>@<base_url>
                                        a vLLM / Ollama / llama.cpp server, e.g.
                                        openai-compatible:qwen2.5-7b-instruct@http://127.0.0.1:8000/v1

``build_controller`` is the one path a reply takes: ``RetryAfterRetry`` (LangChain's ``RunnableRetry`` whose
tenacity wait honours a provider's ``Retry-After``, else exponential backoff with jitter), the decision timeout,
then ``with_fallbacks`` once (default: the ``rules`` controller). A fallback's reply carries
``response_metadata["fallback_reason"]`` (the error it replaced); the graph counts and records it.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from operator import itemgetter
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langchain_core.runnables.retry import RunnableRetry
from tenacity import AsyncRetrying, RetryCallState, Retrying, wait_none
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .rules import RulesChatModel
from .scripted import ScriptedChatModel

log = logging.getLogger(__name__)


@dataclass
class ProviderOptions:
    timeout_s: float = 60.0
    retries: int = 2
    retry_wait: bool = True  # wait the provider's Retry-After, else exponential backoff with jitter
    max_retry_after_s: float = 60.0  # a provider asking for a longer wait gets no retry: the fallback answers
    fallback: str | None = "rules"
    temperature: float | None = 0.0
    model_path: str | None = None  # for `local`: any GGUF chat model
    n_threads: int = 1
    # USD per million tokens, for the run's estimated cost (None: pricing.PRICE_TABLE's entry, if any)
    price_in_per_m: float | None = None
    price_out_per_m: float | None = None


def default_controller() -> str:
    """``local`` when the embedded model is installed, else ``rules``."""
    try:
        from .local import find_smollm2_gguf

        find_smollm2_gguf()
        return "local"
    except Exception:
        return "rules"


def default_prompt(controller: str, model_path: str | None = None) -> str:
    """The prompt template a controller gets when none is named: ``compact`` (a few lines of facts in words) for
    the built-in SmolLM2-135M, which cannot read ``full``'s tables (README, "How good are the controllers?");
    ``full`` for every other controller, a ``local`` one with another GGUF model included."""
    builtin = controller == "local" or controller.startswith("local:adapter=")  # adapters train on compact
    return "compact" if builtin and not model_path else "full"


def load_chat_model(spec: str, options: ProviderOptions | None = None) -> BaseChatModel:
    opts = options or ProviderOptions()
    if spec == "rules":
        return RulesChatModel()
    if spec == "random" or spec.startswith("random:"):
        from .random_policy import RandomChatModel

        return RandomChatModel(seed=int(spec.partition(":")[2] or 0))
    if spec.startswith("constant:"):
        from .constant import ConstantChatModel

        return ConstantChatModel(action=spec.removeprefix("constant:"))
    if spec == "oracle" or spec.startswith("oracle:"):
        from .oracle import OracleChatModel, parse_oracle

        return OracleChatModel(horizon=parse_oracle(spec))
    if spec.startswith("scripted:"):
        return ScriptedChatModel.from_file(spec.removeprefix("scripted:"))
    if spec == "local" or spec.startswith("local:"):
        from .local import LocalChatModel

        path = spec.removeprefix("local").removeprefix(":") or opts.model_path
        kwargs = {"n_threads": opts.n_threads}
        if path and path.startswith(
            "adapter="
        ):  # local:adapter=PATH: the built-in model with a trained adapter
            kwargs["adapter_path"], path = path.removeprefix("adapter="), opts.model_path
        if path:
            kwargs["model_path"] = path
        return LocalChatModel(**kwargs)
    if spec.startswith("openai-compatible:"):
        from langchain_openai import ChatOpenAI

        model, sep, base_url = spec.removeprefix("openai-compatible:").partition("@")
        if not sep or not model or not base_url:
            raise ValueError(
                f"{spec!r}: use openai-compatible:<model>@<base_url>, e.g. openai-compatible:llama3@http://127.0.0.1:8000/v1"
            )
        return ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
            timeout=opts.timeout_s,
            max_retries=0,
            temperature=opts.temperature,
        )
    if ":" not in spec:
        raise ValueError(
            f"unknown controller {spec!r}: use rules, scripted:<file>, oracle[:h], local, <provider>:<model> "
            "(e.g. openai:gpt-4o, google_genai:gemini-2.5-flash) or openai-compatible:<model>@<url>"
        )
    from langchain.chat_models import init_chat_model

    kwargs = {"timeout": opts.timeout_s, "max_retries": 0}
    if opts.temperature is not None:
        kwargs["temperature"] = opts.temperature
    try:
        return init_chat_model(spec, **kwargs)
    except Exception as exc:  # missing key or package: say what to do
        raise ValueError(
            f"could not start controller {spec!r}: {exc}. Set the provider's API key in the environment "
            "(e.g. OPENAI_API_KEY, GOOGLE_API_KEY) or choose --controller rules / local."
        ) from exc


def build_controller(
    model: BaseChatModel,
    tools: list | None,
    options: ProviderOptions | None = None,
    timeout_s: float | None = None,
    answer_always: bool = False,
) -> Runnable:
    """The one path a controller's reply takes: bind ``tools`` (None: bind nothing, e.g. for the critic), check
    the reply (``checked_reply``), retry (Retry-After or backoff, see ``RetryAfterRetry``; not for the
    deterministic controllers), cut it at ``timeout_s`` (the decision timeout, ``invoke_with_timeout``), then
    ``with_fallbacks`` once: the fallback controller (``options.fallback``) answers, or, with ``answer_always``
    and no fallback controller, a reply that changes nothing does. Either carries the reason in
    ``response_metadata["fallback_reason"]`` (the graph records it); a fallback controller's reply also has
    ``response_metadata["fallback"] = True``. Without either the last error is raised."""
    opts = options or ProviderOptions()
    primary = model.bind_tools(tools) if tools is not None else model
    if model._llm_type not in DETERMINISTIC:  # nothing to retry in a deterministic controller
        primary = checked_reply(primary)
        if opts.retries > 0:
            primary = RetryAfterRetry(
                bound=primary,
                max_attempt_number=opts.retries + 1,
                wait_exponential_jitter=opts.retry_wait,
                max_retry_after_s=opts.max_retry_after_s,
            )
    if timeout_s is not None:
        primary = with_timeout(primary, timeout_s)
    fallback = build_fallback(tools, opts)
    if fallback is None and not answer_always:
        return primary
    answer = RunnableLambda(_fallback_answer(fallback, opts.fallback), name="fallback")
    as_input = RunnableLambda(lambda messages: {"messages": messages}, name="controller_input")
    messages_of = RunnableLambda(itemgetter("messages"), name="messages")
    return as_input | (messages_of | primary).with_fallbacks([answer], exception_key="error")


DETERMINISTIC = ("mimic-rules", "mimic-scripted", "mimic-random", "mimic-oracle")


def build_fallback(tools: list | None, options: ProviderOptions) -> Runnable | None:
    """The fallback controller (``options.fallback``) with ``tools`` bound; None when there is none."""
    if not options.fallback:
        return None
    model = load_chat_model(options.fallback, options)
    return model.bind_tools(tools) if tools is not None else model


def _fallback_answer(fallback: Runnable | None, name: str | None):
    def answer(inputs: dict, config: RunnableConfig) -> AIMessage:
        error = inputs["error"]
        reason = f"{type(error).__name__}: {error}"[:300]
        if fallback is None:
            message = AIMessage(
                content=f"controller failed ({reason}); no fallback configured, nothing changes"
            )
            why = f"controller failed ({reason})"
            metadata = {"controller": "none"}
        else:
            message = fallback.invoke(inputs["messages"], config)
            why = f"fell back to {name}: {reason}"
            metadata = {"fallback": True}
        message.response_metadata = {**message.response_metadata, **metadata, "fallback_reason": why}
        return message

    return answer


def invoke_with_timeout(runnable: Runnable, messages: Any, config: RunnableConfig, timeout_s: float) -> Any:
    """The decision timeout: ``runnable.invoke`` in a worker thread, abandoned (not awaited) after ``timeout_s``
    seconds with a ``TimeoutError`` that says so."""
    pool = ContextThreadPoolExecutor(max_workers=1)
    future = pool.submit(runnable.invoke, messages, config)
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        if future.done():  # the call itself raised a TimeoutError
            raise
        raise TimeoutError(f"decision timeout: no reply within {timeout_s:g} s") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung provider call is abandoned, not awaited


def with_timeout(runnable: Runnable, timeout_s: float) -> Runnable:
    """``runnable`` cut at ``timeout_s`` seconds (``invoke_with_timeout``)."""

    def call(messages: Any, config: RunnableConfig) -> Any:
        return invoke_with_timeout(runnable, messages, config, timeout_s)

    return RunnableLambda(call, name="decision_timeout")


# ------------------------------------------------------------------------------------ replies that decide nothing
class ProviderResponseError(Exception):
    """The provider answered with something that is no chat reply (e.g. an empty ``choices`` list)."""


# Gemini's finishReason values that mean "stopped by a filter", not "finished"
_BLOCKING_FINISH_REASONS = {
    "content_filter",
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
}


def checked_reply(bound: Runnable) -> Runnable:
    """``bound`` whose replies are checked: a reply without any message raises ``ProviderResponseError`` (so the
    retries and the fallback handle it, with a reason the decisions table shows), and an empty reply that a
    refusal, a content filter, a safety block or the output limit explains says so (``explain_empty_reply``)."""

    def call(messages: Any, config: RunnableConfig) -> AIMessage:
        try:
            message = bound.invoke(messages, config)
        except IndexError as exc:  # LangChain indexes generations[0]: the reply had no choice / candidate
            raise ProviderResponseError(
                f"the provider's reply held no message (an empty `choices` / `candidates` list): {exc}"
            ) from exc
        return explain_empty_reply(message)

    return RunnableLambda(call, name="checked_reply")


def explain_empty_reply(message: AIMessage) -> AIMessage:
    """A reply with no tool call and no text that a refusal, a content filter / safety block or the output limit
    explains gets that explanation as its text (read from the provider's metadata: OpenAI ``refusal`` and
    ``finish_reason``, Gemini ``finishReason`` and ``promptFeedback``), so the decisions table says why the
    model decided nothing. Other replies are returned as they are."""
    if message.tool_calls or message.invalid_tool_calls or str(message.content or "").strip():
        return message
    meta = message.response_metadata or {}
    refusal = (message.additional_kwargs or {}).get("refusal")
    finish = str(getattr(meta.get("finish_reason"), "value", meta.get("finish_reason")) or "")
    blocked_prompt = (meta.get("prompt_feedback") or {}).get("block_reason")
    if refusal:
        why = f"the provider refused: {refusal}"
    elif blocked_prompt:
        why = f"the provider blocked the prompt (block_reason={getattr(blocked_prompt, 'value', blocked_prompt)})"
    elif finish in _BLOCKING_FINISH_REASONS:
        categories = [
            str(getattr(r.get("category"), "value", r.get("category")))
            for r in meta.get("safety_ratings") or []
            if isinstance(r, dict) and r.get("blocked")
        ]
        why = f"the provider's content filter stopped the reply (finish_reason={finish}" + (
            f"; blocked: {', '.join(categories)})" if categories else ")"
        )
    elif finish in ("length", "MAX_TOKENS"):
        why = f"the reply hit the output token limit before any tool call (finish_reason={finish})"
    else:  # an empty closing turn after tool calls is ordinary: nothing to explain
        return message
    # Not "nothing changed": calls made earlier in the same decision still apply.
    return message.model_copy(update={"content": f"[{why}]"})


# ---------------------------------------------------------------------------------------------- Retry-After
class RetryAfterTooLong(Exception):
    """The provider asked to wait longer than ``ProviderOptions.max_retry_after_s`` before the next attempt."""


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the provider asked to wait before the next request: the ``retry-after-ms`` or ``Retry-After``
    header (seconds or an HTTP date) of the HTTP response that ``exc``, or an exception it was raised from,
    carries as ``.response.headers`` (OpenAI, Anthropic, Google and other httpx/requests based SDKs), else the
    ``google.rpc.RetryInfo.retryDelay`` in the error body a Google API sends with a 429 (``exc.details``). None
    when there is none or it cannot be read. Only these are read; other headers may hold secrets."""
    for _ in range(5):  # a wrapper's cause, e.g. langchain-google-genai re-raising google.genai's ClientError
        if exc is None:
            return None
        try:
            headers = exc.response.headers  # type: ignore[attr-defined]
        except Exception:  # no response, or one whose .response is a property that raises
            headers = None
        seconds = _parse_retry_after(headers) if headers is not None else None
        if seconds is None:  # Google APIs put it in the error body: google.rpc.RetryInfo.retryDelay
            seconds = _retry_info_seconds(getattr(exc, "details", None))
        if seconds is not None:
            return seconds
        exc = exc.__cause__ or exc.__context__
    return None


def _retry_info_seconds(body: Any) -> float | None:
    """``retryDelay`` of a ``type.googleapis.com/google.rpc.RetryInfo`` entry in a Google error body
    (``{"error": {"details": [...]}}``; google.genai's ``APIError.details``): a protobuf Duration, "1.2s" in
    JSON, or ``{"seconds": 1, "nanos": 200000000}``."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, Mapping) else None
    for entry in details if isinstance(details, list) else []:
        if not (isinstance(entry, Mapping) and str(entry.get("@type", "")).endswith("google.rpc.RetryInfo")):
            continue
        delay = entry.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            seconds = _to_float(delay[:-1])
        elif isinstance(delay, Mapping):
            seconds = float(delay.get("seconds", 0) or 0) + float(delay.get("nanos", 0) or 0) / 1e9
        else:
            seconds = None
        if seconds is not None:
            return max(seconds, 0.0)
    return None


def _parse_retry_after(headers: Any) -> float | None:
    milliseconds = _to_float(_header(headers, "retry-after-ms"))
    if milliseconds is not None:
        return max(milliseconds / 1000.0, 0.0)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _to_float(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 for "UTC, origin unknown"
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - time.time(), 0.0)


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name)  # case-insensitive for httpx, requests and aiohttp headers
        if value is None and isinstance(headers, Mapping):  # a plain dict spelled "Retry-After"
            value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name), None)
    except Exception:
        return None
    return None if value is None else str(value)


def _to_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


class wait_retry_after(wait_base):  # noqa: N801 -- named like tenacity's own strategies
    """Tenacity wait: the Retry-After the failed attempt's exception carries, else ``otherwise``."""

    def __init__(self, otherwise: wait_base) -> None:
        self.otherwise = otherwise

    def __call__(self, retry_state: RetryCallState) -> float:
        asked = retry_after_seconds(retry_state.outcome.exception() if retry_state.outcome else None)
        return self.otherwise(retry_state) if asked is None else asked


class stop_when_retry_after_exceeds(stop_base):  # noqa: N801
    """Tenacity stop: the provider asked for a wait longer than ``cap_s`` seconds."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc)
        return asked is not None and asked > self.cap_s


class RetryAfterRetry(RunnableRetry):
    """LangChain's ``RunnableRetry`` whose wait between attempts is the provider's Retry-After when the error
    carries one (see ``retry_after_seconds``), else tenacity's exponential backoff with jitter as before. A
    Retry-After longer than ``max_retry_after_s`` ends the retries at once with ``RetryAfterTooLong`` (which
    names the requested wait) so ``with_fallbacks`` can answer instead. ``wait_exponential_jitter=False``
    means no waiting at all: attempts follow each other at once and Retry-After is not read."""

    max_retry_after_s: float = 60.0

    @property
    def _kwargs_retrying(self) -> dict[str, Any]:
        kwargs = super()._kwargs_retrying  # stop after max_attempt_number, which exceptions, the backoff
        if self.wait_exponential_jitter:
            kwargs["wait"] = wait_retry_after(otherwise=kwargs.get("wait", wait_none()))
            kwargs["stop"] = kwargs["stop"] | stop_when_retry_after_exceeds(self.max_retry_after_s)
            kwargs["before_sleep"] = _log_wait
        return kwargs

    # invoke/ainvoke ask tenacity to re-raise the last error; only they get the clearer one. batch keeps
    # RunnableRetry's own handling (it collects tenacity's RetryError per input).
    def _sync_retrying(self, **kwargs: Any) -> Retrying:
        if kwargs.get("reraise") and self.wait_exponential_jitter:
            kwargs["retry_error_callback"] = self._give_up
        return super()._sync_retrying(**kwargs)

    def _async_retrying(self, **kwargs: Any) -> AsyncRetrying:
        if kwargs.get("reraise") and self.wait_exponential_jitter:
            kwargs["retry_error_callback"] = self._give_up
        return super()._async_retrying(**kwargs)

    def _give_up(self, retry_state: RetryCallState) -> Any:
        """Called by tenacity once it stops: re-raise the last error, saying so when Retry-After stopped it."""
        exc = retry_state.outcome.exception()  # type: ignore[union-attr]  # tenacity stops only after an attempt
        asked = retry_after_seconds(exc)
        attempt, attempts = retry_state.attempt_number, self.max_attempt_number
        if asked is None or asked <= self.max_retry_after_s or attempt >= attempts:
            raise exc
        message = (
            f"gave up after attempt {attempt} of {attempts}: the provider asked to retry after {_seconds(asked)} s, "
            f"more than max_retry_after_s={_seconds(self.max_retry_after_s)} s (raise that to wait so long); "
            f"{type(exc).__name__}: {exc}"
        )
        log.warning(message[:300])
        raise RetryAfterTooLong(message) from exc


def _log_wait(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    source = "the provider's Retry-After" if retry_after_seconds(exc) is not None else "backoff"
    wait = _seconds(retry_state.upcoming_sleep)
    log.info(
        "attempt %d failed (%s); retrying in %s s (%s)",
        retry_state.attempt_number,
        type(exc).__name__,
        wait,
        source,
    )


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"
