"""The README's "Add a tool" worked example, run as a test: the example block below is pasted into the README
verbatim (it is also the docstring at the top of ``tools/registry.py``)."""

# ruff: noqa: E402, I001  (the example block keeps its own imports, in the README's order)

# --- README example start ---
from pydantic import BaseModel, Field
from mimic_learn.tools import TrainerControls, register_tool


class HalveLrArgs(BaseModel):
    reason: str = Field(description="Why, in one short sentence.")


@register_tool(args=HalveLrArgs, mutating=True)
def halve_lr(ctl: TrainerControls, args: HalveLrArgs) -> str:
    """Halve the learning rate from the next epoch."""  # <- the model reads this
    value, note = ctl.check_knob("lr", ctl.trainer.lr / 2)
    return f"lr will be {value:.3g}{note}" + ctl.stage("lr", value, args.reason, "halve_lr")


# --- README example end ---

import pytest
from mimic_learn.tools import REGISTRY, ToolArgumentError, as_langchain_tools, call_tool, discover
from mimic_learn.training import TrainConfig, Trainer

# Registered at import (collection) time; taken out at once so that other test modules see only the
# built-in tools, and put back by the fixture for the tests below only.
HALVE_LR = REGISTRY.pop("halve_lr")


@pytest.fixture
def registered():
    REGISTRY["halve_lr"] = HALVE_LR
    yield HALVE_LR
    REGISTRY.pop("halve_lr", None)


@pytest.fixture
def ctl() -> TrainerControls:
    return TrainerControls(Trainer.from_config(TrainConfig(task="digits", epochs=3)))


def test_registered_tool_is_discovered_and_offered_to_langchain(registered, ctl):
    assert registered.fn is halve_lr and registered.mutating
    assert discover()["halve_lr"] is registered
    assert registered.description == "Halve the learning rate from the next epoch."
    tools = {t.name: t for t in as_langchain_tools(ctl)}
    assert tools["halve_lr"].description == registered.description
    assert "reason" in tools["halve_lr"].args


def test_calling_it_stages_half_the_lr_and_commit_applies_it(registered, ctl):
    lr = ctl.trainer.lr
    reply = call_tool("halve_lr", ctl, {"reason": "loss plateaued"})
    assert reply == f"lr will be {lr / 2:.3g}"
    assert ctl.pending["lr"].value == lr / 2 and ctl.pending["lr"].tool == "halve_lr"
    assert ctl.trainer.lr == lr  # nothing before commit
    result = ctl.commit()
    assert result.changed_knobs == ["lr"]
    assert ctl.trainer.lr == lr / 2


def test_it_gets_the_same_argument_checks_as_the_built_in_tools(registered, ctl):
    with pytest.raises(ToolArgumentError, match="reason is required") as exc:
        call_tool("halve_lr", ctl, {})
    assert exc.value.argument == "reason"


def test_it_is_gone_after_the_tests(ctl):
    assert "halve_lr" not in discover()
    assert "halve_lr" not in {t.name for t in as_langchain_tools(ctl)}
