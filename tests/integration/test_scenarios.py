"""The controller scenario bank is not a toy: keeping settings fails most scenarios; rules beat random and keep."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mimic_learn.agents.rules import RulesChatModel
from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.cli import app
from mimic_learn.evals.scenarios import KEEP, LR_DOWN, ROLLBACK, bank, evaluate_controller, is_sensible, opt


def always_keep() -> ScriptedChatModel:
    return ScriptedChatModel(
        decisions=[], default_turns=[[{"name": "keep_current", "args": {"reason": "hold"}}]]
    )


def test_bank_size_and_keep_current_is_wrong_in_at_least_half():
    scenarios = bank()
    assert len(scenarios) >= 20
    assert len({s.name for s in scenarios}) == len(scenarios)
    assert sum(not s.keep_acceptable for s in scenarios) >= len(scenarios) / 2


def test_sensible_matching():
    assert is_sensible(frozenset(), [KEEP])
    assert not is_sensible(frozenset(), [opt(LR_DOWN)])
    assert is_sensible(frozenset({LR_DOWN}), [opt(ROLLBACK, LR_DOWN)])
    assert not is_sensible(frozenset({LR_DOWN, ("dropout", "up")}), [opt(LR_DOWN)])
    assert not is_sensible(frozenset({("lr", "up")}), [KEEP, opt(LR_DOWN)])


def test_always_keep_scores_far_below_rules_and_rules_beats_random():
    from mimic_learn.agents.random_policy import RandomChatModel

    keep = evaluate_controller(always_keep(), "keep")
    rules = evaluate_controller(RulesChatModel(), "rules")
    rand = evaluate_controller(RandomChatModel(seed=0), "random")
    assert keep.valid_rate == 1.0 and rules.valid_rate == 1.0
    expected_keep = sum(s.keep_acceptable for s in bank()) / len(bank())
    assert abs(keep.sensible_rate - expected_keep) < 1e-9
    assert rules.sensible_rate >= keep.sensible_rate + 0.3
    assert rules.sensible_rate > rand.sensible_rate
    assert len(rules.tool_counts) >= 3


def test_decisions_are_judged_on_what_was_committed():
    # A model whose set_lr is out of range (rejected) changes nothing: on a plateau that is not sensible.
    bad = ScriptedChatModel(
        decisions=[], default_turns=[[{"name": "set_lr", "args": {"lr": 50.0, "reason": "x"}}]]
    )
    plateau = [s for s in bank() if s.name == "plateau_mid"]
    report = evaluate_controller(bad, "bad", plateau)
    assert report.results[0].moves == [] and not report.results[0].sensible and not report.results[0].valid


def test_eval_controller_cli_prints_the_table():
    result = CliRunner().invoke(
        app, ["eval-controller", "--bank", "situations", "--controller", "rules", "--controller", "random"]
    )
    assert result.exit_code == 0, result.output
    assert "rules" in result.output and "random" in result.output and "sensible" in result.output


def test_sensible_needs_a_valid_call():
    """Saying nothing leaves the knobs alone, which the answer key accepts for a healthy run; it still is not a
    sensible decision, because no call was made."""
    from langchain_core.messages import AIMessage

    from mimic_learn.agents.protocol import ProtocolChatModel

    class Silent(ProtocolChatModel):
        @property
        def _llm_type(self) -> str:
            return "silent"

        def decide(self, report, turn, replies):
            return AIMessage(content="all looks fine")

    healthy = [s for s in bank() if s.name == "healthy_mid"]
    assert healthy[0].keep_acceptable
    result = evaluate_controller(Silent(), "silent", healthy).results[0]
    assert not result.valid and not result.sensible


def test_the_bank_is_a_data_file_shipped_with_the_package(tmp_path):
    """The situations live in evals/data/scenarios.yaml (package data); a move the answer key cannot name is
    refused with the moves it can."""
    import tomllib
    from pathlib import Path

    from mimic_learn.evals.scenarios import SCENARIOS_FILE, load_scenarios

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["mimic_learn.evals"]
    assert SCENARIOS_FILE.relative_to(SCENARIOS_FILE.parents[1]).as_posix() in shipped
    assert [s.name for s in load_scenarios(SCENARIOS_FILE)] == [s.name for s in bank()]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "scenarios:\n  - {name: x, description: y, history: [[1, 1, 0.5, 0.5]], acceptable: [[lr sideways]]}\n"
    )
    with pytest.raises(ValueError, match="'lr sideways' is not a move; choose from rollback, lr up"):
        load_scenarios(bad)
