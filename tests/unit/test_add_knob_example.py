"""The "Add a knob" worked example (docs/guides/extend.md), run as a test: the example block below is pasted into
the guide verbatim. One entry in the knob table gives the knob its ``set_<name>`` tool, its bounds and trust
region, its place in the prompt and in the MLflow metrics; nothing else changes."""

# ruff: noqa: E402, I001  (the example block keeps its own imports, in the guide's order)

# --- README example start ---
from mimic_learn.training.knobs import Knob, register_knob


def set_momentum(trainer, value: float) -> None:
    for group in trainer.optimizer.param_groups:
        group["momentum"] = value


register_knob(
    Knob(
        "momentum",
        "momentum",
        bounds=(0.0, 0.99),
        get=lambda trainer: trainer.optimizer.param_groups[0].get("momentum"),  # None: not an SGD optimizer
        set=set_momentum,
        trust="step",  # at most +-0.2 per decision
        max_change=0.2,
        argument="SGD momentum of every parameter group.",
        doc="Set the SGD momentum from the next epoch on. Lower it when the loss oscillates.",
    )
)
# --- README example end ---

from types import SimpleNamespace

import pytest

from mimic_learn.graphs.runner import agent_report
from mimic_learn.prompts.templates import render
from mimic_learn.tools import (
    REGISTRY,
    ToolArgumentError,
    TrainerControls,
    as_langchain_tools,
    call_tool,
    discover,
)
from mimic_learn.tracking import epoch_metrics
from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.knobs import KNOBS

# Registered at import (collection) time; taken out at once so that other test modules see only the
# built-in knobs, and put back by the fixture for the tests below only.
MOMENTUM = KNOBS.pop("momentum")
REGISTRY.pop("set_momentum", None)


@pytest.fixture
def registered():
    register_knob(MOMENTUM)
    yield MOMENTUM
    KNOBS.pop("momentum", None)
    REGISTRY.pop("set_momentum", None)


@pytest.fixture
def ctl() -> TrainerControls:
    config = TrainConfig(task="digits", epochs=3, optimizer="sgd", lr=0.05, momentum=0.5)
    return TrainerControls(Trainer.from_config(config))


def test_the_entry_brings_its_tool(registered, ctl):
    spec = discover()["set_momentum"]
    assert spec.mutating and spec.description == registered.doc
    tools = {t.name: t for t in as_langchain_tools(ctl)}
    assert set(tools["set_momentum"].args) == {"momentum", "reason"}
    assert "Absolute bounds [0, 0.99]; at most +-0.2 per decision" in str(
        tools["set_momentum"].args["momentum"]
    )


def test_the_tool_stages_and_commit_applies_it(registered, ctl):
    reply = call_tool("set_momentum", ctl, {"momentum": 0.6, "reason": "smoother"})
    assert reply.startswith("momentum 0.5 -> 0.6 staged")
    assert ctl.trainer.optimizer.param_groups[0]["momentum"] == 0.5  # nothing before commit
    assert ctl.commit().changed_knobs == ["momentum"]
    assert ctl.trainer.optimizer.param_groups[0]["momentum"] == 0.6


def test_a_value_beyond_the_trust_region_is_rejected_with_the_range_and_current_value(registered, ctl):
    with pytest.raises(ToolArgumentError) as exc:
        call_tool("set_momentum", ctl, {"momentum": 0.95, "reason": "too far"})
    assert "momentum=0.95 is out of range [0.3, 0.7]; current momentum is 0.5" in str(exc.value)
    assert not ctl.pending


def test_it_reaches_the_prompt_and_the_metrics(registered, ctl):
    report = ctl.trainer.run_epoch()
    assert report.knobs["momentum"] == 0.5
    assert "alpha 0, momentum 0.5." in render("full", agent_report(ctl.trainer, report, 3))
    assert epoch_metrics(SimpleNamespace(report=report, state=None))["momentum"] == 0.5


def test_it_is_gone_after_the_tests(ctl):
    assert "momentum" not in KNOBS
    assert "set_momentum" not in discover()
