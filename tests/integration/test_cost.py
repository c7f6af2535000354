"""Tokens and cost: per-decision usage in the decisions table, run totals, prices, `reproduce --dry-run`."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from typer.testing import CliRunner

from mimic_learn.agents.pricing import PRICE_TABLE, price_for
from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.cli import app
from mimic_learn.experiments import TOKENS_PER_DECISION, plan_reproduce
from mimic_learn.tracking import decision_rows, describe_usage, run_usage

from ..agent_helpers import make_runner

runner = CliRunner()


class MeteredChatModel(BaseChatModel):
    """Calls keep_current, then ends the turn; every reply carries provider usage like ChatOpenAI's."""

    @property
    def _llm_type(self) -> str:
        return "metered"

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if isinstance(messages[-1], ToolMessage):
            ai = AIMessage(
                content="kept", usage_metadata={"input_tokens": 300, "output_tokens": 5, "total_tokens": 305}
            )
        else:
            ai = AIMessage(
                content="",
                tool_calls=[{"name": "keep_current", "args": {"reason": "fine"}, "id": "c1"}],
                usage_metadata={"input_tokens": 200, "output_tokens": 20, "total_tokens": 220},
            )
        return ChatResult(generations=[ChatGeneration(message=ai)])


def test_every_decision_records_its_tokens_and_the_run_sums_them(tmp_path):
    run = make_runner(
        tmp_path, epochs=3, model=MeteredChatModel(), provider=ProviderOptions(retry_wait=False)
    )
    try:
        result = run.run()
    finally:
        run.close()
    decided = [o for o in result.epochs if o.decision is not None]
    assert len(decided) == 2
    for outcome in decided:
        (row,) = decision_rows(outcome)
        assert (row["tokens_in"], row["tokens_out"]) == (500, 25)  # both model turns of the decision
    usage = run_usage(result.epochs, "openai:gpt-4o")
    assert (usage["decisions"], usage["total_tokens_in"], usage["total_tokens_out"]) == (2, 1000, 50)
    assert usage["estimated_cost_usd"] == pytest.approx((1000 * 2.50 + 50 * 10.00) / 1e6)
    text = describe_usage(usage)
    assert text.startswith("tokens: 1,000 in / 50 out over 2 decisions; estimated cost $0.0030 at $2.5 in")
    assert "an estimate" in text
    assert "estimated_cost_usd" not in run_usage(result.epochs, "openai-compatible:m@http://x/v1")


def test_prices_table_override_and_bad_input():
    assert price_for("openai:gpt-4o") == PRICE_TABLE["gpt-4o"]
    assert price_for("google_genai:gemini-2.5-flash") == PRICE_TABLE["gemini-2.5-flash"]
    assert price_for("openai-compatible:qwen@http://127.0.0.1:8080/v1") is None
    mine = price_for("openai-compatible:qwen@http://127.0.0.1:8080/v1", price_in=0.1, price_out=0.4)
    assert (mine.input_per_m, mine.output_per_m, mine.source) == (0.1, 0.4, "set on the command line")
    half = price_for("openai:gpt-4o", price_in=1.0)  # the other price comes from the table
    assert (half.input_per_m, half.output_per_m) == (1.0, 10.0)
    with pytest.raises(ValueError, match=r"price_out=-1 is out of range \[0, inf\)"):
        price_for("openai:gpt-4o", price_out=-1)


def test_plan_counts_decisions_per_arm_and_prices_them():
    plan = plan_reproduce(
        "paper", ["full", "6000", "600", "100", "10"], [0, 1, 2], None, "openai:gpt-4o", None
    )
    # decisions at every epoch boundary but the last: 4 + 4 + 29 + 29 + 29 = 95 per seed
    assert plan.per_arm == {
        "llm_paper_log_only": 285,
        "llm_paper_memory": 285,
        "llm_paper_revert": 285,
        "rules": 285,
    }
    assert plan.cells == 6 * 5 * 3 and plan.llm_decisions == 855  # rules spends no tokens
    assert plan.tokens_in == 855 * TOKENS_PER_DECISION[0]
    assert plan.cost_usd == pytest.approx(PRICE_TABLE["gpt-4o"].cost_usd(plan.tokens_in, plan.tokens_out))
    blog = plan_reproduce("blog", ["full"], [0], ["every3_losses", "steplr"], "local", 20)
    assert blog.per_arm == {"every3_losses": 6} and blog.cost_usd is None
    with pytest.raises(ValueError, match="unknown arms"):
        plan_reproduce("paper", ["full"], [0], ["nope"], "rules", None)


def test_reproduce_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        [
            "reproduce",
            "paper",
            "--dry-run",
            "--controller",
            "openai:gpt-4o",
            "--regimes",
            "600",
            "--seeds",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dry run: 6 cells, 116 controller decisions (87 by a model that spends tokens)" in result.output
    assert "estimated cost: $" in result.output and "nothing was run" in result.output
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no report


def test_run_prints_tokens_and_cost_with_given_prices(tmp_path):
    result = runner.invoke(
        app,
        ["run", "--controller", "rules", "--epochs", "2", "--no-track", "--price-in", "1", "--price-out", "2",
         "--state-db", str(tmp_path / "s.sqlite")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tokens: 0 in / 0 out over 1 decisions; estimated cost $0.0000 at $1 in / $2 out" in result.output
