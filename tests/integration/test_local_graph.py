"""The embedded model inside the real graph: live bounds make every decoded value valid; adjust's actions."""

from __future__ import annotations

import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool

from mimic_learn.agents.local_grammar import candidate_values, with_live_bounds
from mimic_learn.evals.scenarios import bank, evaluate_controller, scenario_trainer
from mimic_learn.tools import TrainerControls, as_langchain_tools, call_tool


def test_candidate_values_stay_inside_the_allowed_range():
    assert candidate_values(1e-4, 1e-2, 1e-3, multiplicative=True) == [
        0.0001,
        0.0003,
        0.0005,
        0.001,
        0.002,
        0.003,
        0.01,
    ]
    assert candidate_values(0.0, 0.5, 0.2, multiplicative=False) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert candidate_values(0.0, 0.1, 0.0, multiplicative=True) == [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
    assert candidate_values(0.5, 0.6, 0.55, multiplicative=False) == [0.55]


def test_live_bounds_turn_knob_arguments_into_valid_enums():
    s = next(x for x in bank() if x.name == "underfitting_tiny_lr")
    ctl = TrainerControls(scenario_trainer(s))
    tools = {t.name: t for t in as_langchain_tools(ctl)}
    live = {name: t.live_bounds for name, t in tools.items()}
    patched = {
        t["function"]["name"]: t
        for t in with_live_bounds([convert_to_openai_tool(t) for t in tools.values()], live)
    }
    lr_enum = patched["set_lr"]["function"]["parameters"]["properties"]["lr"]["enum"]
    low, high = ctl.allowed_range("lr")
    assert lr_enum and all(low <= v <= high for v in lr_enum)
    for value in lr_enum:  # every value the grammar allows is accepted by the tool
        call_tool("set_lr", ctl, {"lr": value, "reason": "x"})
    assert "enum" not in patched["propose_weight_delta"]["function"]["parameters"]["properties"]["layer"]


def test_adjust_applies_relative_changes():
    s = next(x for x in bank() if x.name == "plateau_mid")
    ctl = TrainerControls(scenario_trainer(s))
    call_tool("adjust", ctl, {"action": "lr_x0.5", "reason": "plateau"})
    call_tool("adjust", ctl, {"action": "dropout_up", "reason": "regularise"})
    ctl.commit()
    assert ctl.trainer.lr == s.lr * 0.5 and abs(ctl.trainer.dropout - (s.dropout + 0.1)) < 1e-9


def test_local_controller_makes_valid_calls_in_the_graph(local_model):
    picked = [s for s in bank() if s.name in ("plateau_mid", "overfitting", "underfitting_tiny_lr")]
    report = evaluate_controller(local_model, "local", picked)
    assert report.valid_rate == 1.0, [(r.scenario, r.tools, r.fallbacks) for r in report.results]


def test_diagnosis_reaches_the_decision_record(local_model):
    from mimic_learn.agents.local import SITUATIONS
    from mimic_learn.agents.providers import ProviderOptions
    from mimic_learn.graphs.graph import AgentConfig, build_graph
    from mimic_learn.graphs.runner import agent_report

    s = next(x for x in bank() if x.name == "overfitting")
    trainer = scenario_trainer(s)
    diagnosing = local_model.model_copy(update={"diagnose": True})
    graph = build_graph(
        TrainerControls(trainer), diagnosing, AgentConfig(prompt="compact"), ProviderOptions(retry_wait=False)
    )
    payload = {"epoch": trainer.epoch, "report": agent_report(trainer, trainer.history[-1], s.total_epochs)}
    decision = graph.invoke(payload, {"recursion_limit": 60})["decision"]
    # the final text is what the decisions table (and MLflow) shows for the decision
    named = decision["final_text"].removeprefix("situation: ").split(".")[0]
    assert named in SITUATIONS and decision["calls"] and not decision["fallbacks"]


@pytest.fixture(scope="module")
def local_model():
    import os

    from mimic_learn.agents.local import LocalChatModel, LocalModelMissingError, find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except LocalModelMissingError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    return LocalChatModel()
