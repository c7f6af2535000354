"""Bad input from a real OpenAI-protocol server, through the real HTTP client (ChatOpenAI) and the real graph:
malformed tool-call JSON, a tool name that is not bound, an empty choice list, an HTML error page, a response cut
mid-body. Each must leave a clear error in the decisions table (the rows MLflow logs) and the run must go on.
The replies are tests/data/openai/*.json, served by tests/replay_server.py on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.tracking import decision_rows

from ..agent_helpers import make_runner
from ..replay_server import ReplayServer, load_reply

pytestmark = [pytest.mark.wire, pytest.mark.faults]


def run_three_epochs(tmp_path, names: list[str], retries: int = 0):
    """Three epochs (decisions after epochs 1 and 2); the second decision gets a good tool call, so a run that
    went on after the fault shows it. Returns (result, rows of the first decision, requests)."""
    replies = [load_reply(f"openai/{n}.json") for n in names]
    replies += [load_reply("openai/tool_calls.json"), load_reply("openai/final.json")]
    with ReplayServer(replies) as server:
        runner = make_runner(
            tmp_path,
            controller=f"openai-compatible:gpt-4o@{server.url}/v1",
            epochs=3,
            provider=ProviderOptions(retries=retries, retry_wait=False),
        )
        try:
            result = runner.run()
        finally:
            runner.close()
        return result, decision_rows(result.epochs[0]), server.requests


def assert_run_went_on(result) -> None:
    assert len(result.epochs) == 3 and result.test is not None
    second = result.epochs[1].decision
    assert [(c["tool"], c["accepted"]) for c in second["calls"]] == [("set_lr", True)]
    assert second["fallbacks"] == []


def test_malformed_arguments_json_is_an_invalid_call_with_the_parse_error(tmp_path):
    result, rows, _ = run_three_epochs(tmp_path, ["malformed_arguments", "final"])
    (row,) = rows
    assert row["tool"] == "set_lr" and row["accepted"] is False
    assert "are not valid JSON" in row["reply"] and "nothing changed" in row["reply"]
    assert row["changes"] == "[]" and result.epochs[0].state["invalid_calls"] == 1
    assert_run_went_on(result)


def test_unbound_tool_name_is_rejected_with_the_bound_names(tmp_path):
    result, rows, _ = run_three_epochs(tmp_path, ["unbound_tool", "final"])
    (row,) = rows
    assert row["tool"] == "set_momentum" and row["accepted"] is False
    assert "set_momentum is not a valid tool" in row["reply"] and "set_lr" in row["reply"]
    assert row["changes"] == "[]"
    assert_run_went_on(result)


def test_empty_choices_falls_back_with_the_reason(tmp_path):
    result, rows, requests = run_three_epochs(tmp_path, ["empty_choices"])
    assert "ProviderResponseError: the provider's reply held no message" in rows[0]["fallbacks"]
    assert rows[0]["tool"] == "keep_current"  # the rules fallback decided
    assert result.epochs[0].state["tokens_in"] == 0
    assert_run_went_on(result)


def test_empty_choices_is_retried_before_the_fallback(tmp_path):
    result, rows, requests = run_three_epochs(tmp_path, ["empty_choices", "tool_calls", "final"], retries=1)
    assert rows[0]["fallbacks"] == "" and rows[0]["tool"] == "set_lr"  # the retry got a good reply
    assert len(requests) == 5  # empty, retry (call), final; second decision (call), final


def test_html_error_page_falls_back_with_the_status(tmp_path):
    result, rows, _ = run_three_epochs(tmp_path, ["html_502"])
    assert "Error code: 502" in rows[0]["fallbacks"] and rows[0]["fallbacks"].startswith("fell back to rules")
    assert_run_went_on(result)


def test_response_cut_mid_body_falls_back_as_a_connection_error(tmp_path):
    result, rows, _ = run_three_epochs(tmp_path, ["cut_mid_response"])
    assert "Connection error" in rows[0]["fallbacks"]
    assert rows[0]["tool"] == "keep_current"
    assert_run_went_on(result)
