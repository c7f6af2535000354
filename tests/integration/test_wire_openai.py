"""OpenAI's chat-completions wire format, through the real client (ChatOpenAI over HTTP) and the real graph.

A replay server on 127.0.0.1 (tests/replay_server.py) answers with recorded responses (tests/data/openai/, written
from the documented REST schema); each test asserts what the client sent and what the graph made of the answer.
``openai-compatible:<model>@<url>`` and ``openai:<model>`` with OPENAI_BASE_URL (GPT-4o's own code path) both
run here. Contract tests of the wire format, not of a model's quality.
"""

from __future__ import annotations

import time

import pytest

from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.tools.registry import discover

from ..agent_helpers import make_runner
from ..replay_server import ReplayServer, load_reply

pytestmark = pytest.mark.wire


def decide_once(tmp_path, replies: list[dict], controller: str | None = None, **provider):
    """Two digits epochs, so exactly one decision (after epoch 1), against the replay server; returns that
    epoch's outcome (its ``next_lr``: the lr epoch 2 trained with) and the requests the server got."""
    with ReplayServer(replies) as server:
        spec = controller or f"openai-compatible:gpt-4o@{server.url}/v1"
        runner = make_runner(
            tmp_path, controller=spec, epochs=2, provider=ProviderOptions(**({"retries": 0} | provider))
        )
        try:
            result = runner.run()
        finally:
            runner.close()
        outcome = result.epochs[0]
        outcome.next_lr = result.epochs[1].report.lr
        return outcome, server.requests


def openai_replies(*names: str) -> list[dict]:
    return [load_reply(f"openai/{name}.json") for name in names]


def test_tool_call_is_executed_and_usage_is_counted(tmp_path):
    outcome, requests = decide_once(tmp_path, openai_replies("tool_calls", "final"))
    decision = outcome.decision
    assert [(c["tool"], c["args"]["lr"], c["accepted"]) for c in decision["calls"]] == [
        ("set_lr", 0.0005, True)
    ]
    assert decision["changes"][0]["key"] == "lr" and decision["changes"][0]["value"] == "0.0005"
    assert outcome.next_lr == pytest.approx(0.0005) and decision["fallbacks"] == []
    # usage of both turns, from the responses' `usage`
    assert (outcome.state["tokens_in"], outcome.state["tokens_out"]) == (1234 + 1301, 41 + 12)
    # what went over the wire: every registered tool, the tool result in the second request
    first, second = (r.json for r in requests)
    assert requests[0].path == "/v1/chat/completions"
    assert {t["function"]["name"] for t in first["tools"]} == set(discover())
    assert all(
        t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in first["tools"]
    )
    tool_reply = second["messages"][-1]
    assert tool_reply["role"] == "tool" and tool_reply["tool_call_id"] == "call_replay_1"
    assert "0.0005" in tool_reply["content"]


def test_openai_provider_string_uses_openai_base_url(tmp_path, monkeypatch):
    """``--controller openai:gpt-4o`` is init_chat_model's ChatOpenAI: it reads OPENAI_BASE_URL and the key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-replay")
    with ReplayServer(openai_replies("tool_calls", "final")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        runner = make_runner(
            tmp_path, controller="openai:gpt-4o", epochs=2, provider=ProviderOptions(retries=0)
        )
        try:
            outcome = runner.run().epochs[0]
        finally:
            runner.close()
        requests = server.requests
    assert [c["tool"] for c in outcome.decision["calls"]] == ["set_lr"] and outcome.decision["changes"]
    assert requests[0].json["model"] == "gpt-4o"
    assert requests[0].headers["authorization"] == "Bearer sk-dummy-for-the-replay"


def test_refusal_is_recorded_and_nothing_changes(tmp_path):
    outcome, _ = decide_once(tmp_path, openai_replies("refusal"))
    decision = outcome.decision
    assert decision["changes"] == [] and decision["calls"] == [] and decision["fallbacks"] == []
    assert decision["final_text"].startswith("[the provider refused: I'm sorry")


def test_content_filter_is_recorded_and_nothing_changes(tmp_path):
    outcome, _ = decide_once(tmp_path, openai_replies("content_filter"))
    assert outcome.decision["changes"] == []
    assert "content filter stopped the reply (finish_reason=content_filter)" in outcome.decision["final_text"]
    assert outcome.state["tokens_in"] == 1234  # a filtered reply still costs its prompt


def test_429_waits_the_retry_after_header_then_succeeds(tmp_path):
    start = time.monotonic()
    outcome, requests = decide_once(
        tmp_path, openai_replies("rate_limit_429", "tool_calls", "final"), retries=2
    )
    waited = time.monotonic() - start
    assert len(requests) == 3 and outcome.decision["fallbacks"] == []
    assert [c["tool"] for c in outcome.decision["calls"]] == ["set_lr"]
    assert waited >= 1.0  # the header said 1 s


def test_429_retry_after_beyond_the_cap_goes_to_the_fallback_at_once(tmp_path):
    long_wait = load_reply("openai/rate_limit_429.json")
    long_wait["headers"] = {**long_wait["headers"], "retry-after": "3600"}
    start = time.monotonic()
    outcome, requests = decide_once(tmp_path, [long_wait], retries=3, max_retry_after_s=5)
    assert time.monotonic() - start < 30 and len(requests) == 1
    assert any(
        "retry after 3600 s, more than max_retry_after_s=5 s" in f for f in outcome.decision["fallbacks"]
    )
    assert [c["tool"] for c in outcome.decision["calls"]] == ["keep_current"]  # the rules fallback decided


def test_request_carries_the_report_and_system_prompt(tmp_path):
    _, requests = decide_once(tmp_path, openai_replies("tool_calls", "final"))
    messages = requests[0].json["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Epoch 1 of 2" in messages[1]["content"] and "validation loss" in messages[1]["content"]
    assert requests[0].json["temperature"] == 0.0 and requests[0].json["model"] == "gpt-4o"
    assert not requests[0].json.get("stream")  # one JSON response per decision turn
