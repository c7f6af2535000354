"""The README's "Add a reflection policy" worked example, run as a test (the block is pasted verbatim)."""

# ruff: noqa: E402, I001  (the example block keeps its own imports, in the README's order)

# --- README example start ---
from mimic_learn.agents.reflection import (
    ReflectionContext,
    ReflectionOutcome,
    ReflectionPolicy,
    register_policy,
)


@register_policy("cautious")
class Cautious(ReflectionPolicy):
    """After any epoch whose validation accuracy fell, tell the controller to prefer small changes."""

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        critique = ctx.critique()
        history = ctx.controls.trainer.history
        fell = len(history) > 1 and history[-1].val_acc < history[-2].val_acc
        return ReflectionOutcome(
            critique=critique, inject="Accuracy fell: prefer small changes." if fell else ""
        )


# --- README example end ---

from langchain_core.messages import HumanMessage

from mimic_learn.agents.reflection import POLICIES, get_policy
from mimic_learn.agents.scripted import ScriptedChatModel

from ..agent_helpers import make_runner

CAUTIOUS = POLICIES.pop("cautious")  # other test modules see only the built-in policies


def test_the_example_policy_is_selected_by_name_and_reaches_the_prompt(tmp_path, monkeypatch):
    """Validation accuracy is pinned (0.50, 0.60, 0.55) so both branches run: after epoch 2 (it rose) the prompt
    has no hint, after epoch 3 (it fell) it has the policy's hint."""
    from mimic_learn.training.trainer import Trainer

    monkeypatch.setitem(POLICIES, "cautious", CAUTIOUS)
    assert isinstance(get_policy("cautious"), Cautious)
    pinned = {1: 0.50, 2: 0.60, 3: 0.55}
    real_epoch = Trainer.run_epoch

    def pinned_epoch(self):
        report = real_epoch(self)  # the same object is the last entry of trainer.history
        report.val_acc = pinned[report.epoch]
        return report

    monkeypatch.setattr(Trainer, "run_epoch", pinned_epoch)
    model = ScriptedChatModel(
        decisions=[
            {"epoch": e, "tool_calls": [{"name": "keep_current", "args": {"reason": "x"}}]} for e in (1, 2, 3)
        ]
    )
    runner = make_runner(tmp_path, model=model, reflection="cautious", epochs=4)
    runner.step()
    rose, fell = runner.step(), runner.step()
    runner.close()
    assert [r.val_acc for r in runner.trainer.history] == [0.50, 0.60, 0.55]
    prompts = {}
    for outcome in (rose, fell):
        human = next(m for m in outcome.state["messages"] if isinstance(m, HumanMessage))
        prompts[outcome.report.epoch] = human.content
        assert outcome.state["reflection"].startswith("Decision after epoch")
    assert "prefer small changes" not in prompts[2]
    assert "Accuracy fell: prefer small changes." in prompts[3]


def test_unknown_policy_names_the_choices():
    import pytest

    with pytest.raises(ValueError, match="log_only, memory, revert_on_harm"):
        get_policy("nope")


def test_the_example_policy_injects_only_when_accuracy_fell(tmp_path):
    runner = make_runner(tmp_path, controller="rules", epochs=3)
    runner.trainer.run_epoch()
    runner.trainer.run_epoch()
    history = runner.trainer.history
    ctx = ReflectionContext(previous=None, report={}, controls=runner.controls, memory=[])
    history[-1].val_acc = history[-2].val_acc + 0.01
    assert Cautious().reflect(ctx).inject == ""
    history[-1].val_acc = history[-2].val_acc - 0.01
    assert Cautious().reflect(ctx).inject == "Accuracy fell: prefer small changes."
