"""Controller retries honour a provider's Retry-After (agents/providers.py, ``RetryAfterRetry``).

No network and no real sleeping: a fake chat model raises errors shaped like an SDK's HTTP error (the response
rides on ``exc.response``), and the ``waits`` fixture records what tenacity would have slept.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from mimic_learn.agents.providers import ProviderOptions, RetryAfterTooLong, build_controller

PROMPT = [HumanMessage("decide")]


class FlakyChatModel(GenericFakeChatModel):
    """Raises ``errors`` one per call, then answers "ok"."""

    errors: list[Exception] = []
    calls: int = 0

    def bind_tools(self, tools: Any, **kwargs: Any):  # GenericFakeChatModel.bind_tools raises
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def flaky(*errors: Exception) -> FlakyChatModel:
    return FlakyChatModel(messages=iter([AIMessage("ok")] * 5), errors=list(errors))


class ProviderHTTPError(Exception):
    """An SDK's HTTP error: the status in the message, the HTTP response on ``.response``."""

    def __init__(self, headers: dict, status: int = 429):
        super().__init__(f"{status} Too Many Requests")
        self.response = SimpleNamespace(status_code=status, headers=headers)


def rate_limited(retry_after: str = "7", **headers: str) -> ProviderHTTPError:
    return ProviderHTTPError({"retry-after": retry_after, **headers})


def options(**kwargs) -> ProviderOptions:
    return ProviderOptions(**({"retries": 2, "retry_wait": True, "fallback": None} | kwargs))


def call(model: FlakyChatModel, opts: ProviderOptions, mode: str = "sync") -> AIMessage:
    controller = build_controller(model, [], opts)
    if mode == "async":
        return asyncio.run(controller.ainvoke(PROMPT))
    return controller.invoke(PROMPT)


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The seconds tenacity sleeps between attempts (tenacity's default sleeps call time.sleep and
    asyncio.sleep), recorded instead of slept."""
    recorded: list[float] = []

    async def record_async(seconds: float, result: Any = None) -> Any:
        recorded.append(seconds)
        return result

    monkeypatch.setattr(time, "sleep", recorded.append)
    monkeypatch.setattr(asyncio, "sleep", record_async)
    return recorded


def http_date(seconds_from_now: int) -> str:
    return email.utils.formatdate(math.floor(time.time()) + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_after_seconds_is_waited_before_the_retry(waits, mode):
    model = flaky(rate_limited("7"))
    ai = call(model, options(), mode)
    assert ai.content == "ok" and not ai.response_metadata.get("fallback")
    assert waits == [7.0]
    assert model.calls == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),  # a plain dict need not be lower-case
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # milliseconds win, as in the OpenAI SDK
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: retry at once
    ],
    ids=["capitalised", "fraction", "zero", "ms", "ms-over-seconds", "past-date"],
)
def test_retry_after_forms(waits, headers, expected):
    model = flaky(ProviderHTTPError(headers))
    assert call(model, options()).content == "ok"
    assert waits == [expected]


def test_retry_after_as_http_date(waits):
    model = flaky(rate_limited(http_date(30)))
    assert call(model, options()).content == "ok"
    assert len(waits) == 1 and 28.0 < waits[0] <= 30.0, waits


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_retry_after_the_backoff_is_exponential_with_jitter(waits, mode):
    model = flaky(ConnectionError("refused"), ProviderHTTPError({"retry-after": "soon"}, status=503))
    assert call(model, options(), mode).content == "ok"
    assert len(waits) == 2 and 1.0 <= waits[0] <= 2.0 and 2.0 <= waits[1] <= 3.0, waits


def test_retry_wait_false_never_waits(waits):
    model = flaky(rate_limited("7"), rate_limited("120"))
    assert call(model, options(retry_wait=False)).content == "ok"
    assert not any(waits) and model.calls == 3, waits  # tenacity "sleeps" 0 s between attempts


def test_retry_after_up_to_the_cap_is_waited(waits):
    model = flaky(rate_limited("60"))
    assert call(model, options(max_retry_after_s=60)).content == "ok"
    assert waits == [60.0]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_after_over_the_cap_gives_up_at_once(waits, mode):
    model = flaky(rate_limited("120"))
    with pytest.raises(RetryAfterTooLong) as raised:
        call(model, options(max_retry_after_s=60), mode)
    message = str(raised.value)
    assert "asked to retry after 120 s" in message and "max_retry_after_s=60 s" in message, message
    assert "429 Too Many Requests" in message and isinstance(raised.value.__cause__, ProviderHTTPError)
    assert waits == [] and model.calls == 1


def test_retry_after_over_the_cap_goes_to_the_fallback(waits):
    model = flaky(rate_limited("3600"))
    ai = call(model, options(max_retry_after_s=60, fallback="rules"))
    assert ai.response_metadata.get("fallback") is True and ai.response_metadata.get("controller") == "rules"
    assert waits == [] and model.calls == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_exhausted_retries_fall_back(waits, mode):
    model = flaky(rate_limited("7"), rate_limited("7"), rate_limited("7"))
    ai = call(model, options(fallback="rules"), mode)
    assert ai.response_metadata.get("fallback") is True
    assert waits == [7.0, 7.0] and model.calls == 3


def test_exhausted_retries_reraise_the_providers_error(waits):
    model = flaky(rate_limited("7"), rate_limited("7"), rate_limited("7"))
    with pytest.raises(ProviderHTTPError):
        call(model, options())
    assert waits == [7.0, 7.0]


def test_retry_after_is_found_on_the_cause_of_a_wrapped_error(waits):
    try:
        try:
            raise rate_limited("7")
        except ProviderHTTPError as inner:
            raise RuntimeError("Error calling model (RESOURCE_EXHAUSTED)") from inner
    except RuntimeError as wrapped:
        error = wrapped
    assert call(flaky(error), options()).content == "ok"
    assert waits == [7.0]


def test_openai_rate_limit_error(waits):
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    response = httpx.Response(429, headers={"retry-after": "7"}, request=request)
    error = openai.RateLimitError("Rate limit reached", response=response, body=None)
    assert call(flaky(error), options()).content == "ok"
    assert waits == [7.0]


def test_google_rate_limit_error(waits):
    """langchain-google-genai re-raises google.genai's ClientError (which holds the response) as its own."""
    errors = pytest.importorskip("google.genai.errors")
    chat_models = pytest.importorskip("langchain_google_genai.chat_models")
    httpx = pytest.importorskip("httpx")
    request = httpx.Request("POST", "https://generativelanguage.googleapis.com/")
    response = httpx.Response(429, headers={"retry-after": "7"}, request=request)
    client_error = errors.ClientError(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, response)
    try:
        chat_models._handle_client_error(client_error, {"model": "gemini-2.5-flash"})
    except Exception as wrapped:
        error = wrapped
    assert call(flaky(error), options()).content == "ok"
    assert waits == [7.0]


def test_waits_are_logged_without_other_headers(waits, caplog):
    model = flaky(
        rate_limited("7", authorization="Bearer sk-secret"), rate_limited("120", cookie="session=secret")
    )
    caplog.set_level(logging.DEBUG, logger="mimic_learn.agents.providers")
    with pytest.raises(RetryAfterTooLong):
        call(model, options())
    assert "retrying in 7 s (the provider's Retry-After)" in caplog.text
    assert "asked to retry after 120 s" in caplog.text
    assert "secret" not in caplog.text
