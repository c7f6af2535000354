"""Gemini's generateContent wire format, through ``--controller google_genai:gemini-2.5-flash`` as users run it.

langchain-google-genai (google-genai SDK underneath) is pointed at a replay server on 127.0.0.1 with the SDK's
own ``GOOGLE_GEMINI_BASE_URL`` (and a dummy ``GOOGLE_API_KEY``), so the request is built and the response parsed
by exactly the code that talks to Google. Responses: tests/data/gemini/ (written from the documented REST
schema). Each test asserts the request we send (tool declarations in the schema subset Gemini accepts) and the
graph's behaviour for the answer. Contract tests of the wire format, not of a model's quality.
"""

from __future__ import annotations

import re
import time

import pytest

from mimic_learn.agents.providers import ProviderOptions, retry_after_seconds
from mimic_learn.tools.registry import discover

from ..agent_helpers import make_runner
from ..replay_server import ReplayServer, load_reply

pytestmark = pytest.mark.wire

CONTROLLER = "google_genai:gemini-2.5-flash"
# Fields of the Gemini API's `Schema` object (ai.google.dev/api/caching#Schema, v1beta): anything else in a
# function declaration's parameters is rejected with 400 INVALID_ARGUMENT ("Unknown name ..."), e.g. the JSON
# Schema keywords pydantic writes: additionalProperties, $ref/$defs, const, exclusiveMinimum, oneOf, allOf.
GEMINI_SCHEMA_FIELDS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
}  # fmt: skip
GEMINI_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")


@pytest.fixture(autouse=True)
def dummy_key(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "dummy-key-for-the-replay")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)


def decide_once(tmp_path, monkeypatch, names: list[str], **provider):
    """Two digits epochs (one decision) against the replay server; returns (outcome, requests, seconds)."""
    with ReplayServer([load_reply(f"gemini/{name}.json") for name in names]) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        runner = make_runner(
            tmp_path, controller=CONTROLLER, epochs=2, provider=ProviderOptions(**({"retries": 0} | provider))
        )
        start = time.monotonic()
        try:
            result = runner.run()
        finally:
            runner.close()
        return result.epochs[0], server.requests, time.monotonic() - start


def schema_problems(schema: dict, where: str) -> list[str]:
    problems = [f"{where}: unsupported keyword {k!r}" for k in schema if k not in GEMINI_SCHEMA_FIELDS]
    if schema.get("type") not in GEMINI_TYPES:
        problems.append(f"{where}: type {schema.get('type')!r} is not one of {sorted(GEMINI_TYPES)}")
    for name, sub in (schema.get("properties") or {}).items():
        problems += schema_problems(sub, f"{where}.{name}")
        if sub.get("type") == "OBJECT" or "properties" in sub:
            problems.append(f"{where}.{name}: nested object (our tools keep flat arguments)")
    return problems


def test_function_call_is_executed_and_declarations_fit_gemini(tmp_path, monkeypatch):
    outcome, requests, _ = decide_once(tmp_path, monkeypatch, ["function_call", "final"])
    decision = outcome.decision
    assert [(c["tool"], c["args"]["lr"], c["accepted"]) for c in decision["calls"]] == [
        ("set_lr", 0.0005, True)
    ]
    assert decision["changes"][0]["value"] == "0.0005" and decision["fallbacks"] == []
    assert (outcome.state["tokens_in"], outcome.state["tokens_out"]) == (
        1234 + 1301,
        41 + 12,
    )  # usageMetadata

    first = requests[0]
    assert first.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert first.headers["x-goog-api-key"] == "dummy-key-for-the-replay"
    body = first.json
    assert "systemInstruction" in body and body["contents"][0]["role"] == "user"
    declarations = [d for tool in body["tools"] for d in tool["functionDeclarations"]]
    assert {d["name"] for d in declarations} == set(discover())
    problems = []
    for d in declarations:
        assert FUNCTION_NAME.match(d["name"]) and d["description"]
        if "parameters" in d:  # a tool without arguments may leave them unset
            problems += schema_problems(d["parameters"], d["name"])
            assert d["parameters"]["type"] == "OBJECT"
            assert set(d["parameters"].get("required", [])) <= set(d["parameters"]["properties"])
    assert problems == []
    set_lr = next(d for d in declarations if d["name"] == "set_lr")["parameters"]["properties"]
    assert set_lr["lr"]["type"] == "NUMBER" and "1e-6" in set_lr["lr"]["description"]  # bounds are in words

    # the second turn sends the call and its result back as functionCall / functionResponse parts
    parts = [p for c in requests[1].json["contents"] for p in c["parts"]]
    assert any(p.get("functionCall", {}).get("name") == "set_lr" for p in parts)
    response = next(p["functionResponse"] for p in parts if "functionResponse" in p)
    assert response["name"] == "set_lr" and "0.0005" in str(response["response"])


def test_safety_block_is_recorded_and_nothing_changes(tmp_path, monkeypatch):
    outcome, _, _ = decide_once(tmp_path, monkeypatch, ["safety_block"])
    decision = outcome.decision
    assert decision["changes"] == [] and decision["calls"] == [] and decision["fallbacks"] == []
    assert "finish_reason=SAFETY; blocked: HARM_CATEGORY_DANGEROUS_CONTENT" in decision["final_text"]


def test_blocked_prompt_is_recorded_and_nothing_changes(tmp_path, monkeypatch):
    outcome, _, _ = decide_once(tmp_path, monkeypatch, ["prompt_blocked"])
    assert outcome.decision["changes"] == []
    assert "the provider blocked the prompt (block_reason=SAFETY)" in outcome.decision["final_text"]


def test_429_waits_the_retry_info_delay_in_the_body(tmp_path, monkeypatch):
    outcome, requests, seconds = decide_once(
        tmp_path, monkeypatch, ["rate_limit_429", "function_call", "final"], retries=2
    )
    assert len(requests) == 3 and outcome.decision["fallbacks"] == []
    assert [c["tool"] for c in outcome.decision["calls"]] == ["set_lr"]
    assert seconds >= 1.2  # RetryInfo.retryDelay "1.2s"; no Retry-After header was sent


def test_429_retry_info_beyond_the_cap_goes_to_the_fallback_at_once(tmp_path, monkeypatch):
    outcome, requests, seconds = decide_once(
        tmp_path, monkeypatch, ["rate_limit_429_long"], retries=3, max_retry_after_s=10
    )
    assert len(requests) == 1 and seconds < 30
    assert any(
        "retry after 3600 s, more than max_retry_after_s=10 s" in f for f in outcome.decision["fallbacks"]
    )
    assert [c["tool"] for c in outcome.decision["calls"]] == ["keep_current"]  # the rules fallback decided


def test_500_is_retried_then_the_fallback_decides(tmp_path, monkeypatch):
    outcome, requests, _ = decide_once(tmp_path, monkeypatch, ["internal_500", "internal_500"], retries=1)
    assert len(requests) == 2
    (fallback,) = outcome.decision["fallbacks"]
    assert fallback.startswith("fell back to rules:") and "500 INTERNAL" in fallback
    assert outcome.decision["calls"][0]["tool"] == "keep_current"


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("1.2s", 1.2), ("0s", 0.0), ({"seconds": 2, "nanos": 500000000}, 2.5), ("soon", None)],
)
def test_retry_info_delay_formats(delay, seconds):
    class ClientError(Exception):  # google.genai.errors.APIError keeps the parsed body as .details
        details = {
            "error": {
                "code": 429,
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
            }
        }

    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ClientError()
    assert retry_after_seconds(wrapped) == (pytest.approx(seconds) if seconds is not None else None)
