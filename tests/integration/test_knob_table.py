"""A knob is one entry of the table in training/knobs.py. Gradient clipping (``max_grad_norm``) was added as one
entry plus the trainer's clipping line, and nothing else names it; these tests show it everywhere a knob goes:
``Bounds`` and ``allowed_range`` with the tool's rejection message, the tool list, the prompt the model sees,
the MLflow metrics of a tracked run, its decisions table, and the trainer's checkpoints."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from langchain_core.messages import HumanMessage

from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.tools import (
    Bounds,
    ToolArgumentError,
    TrainerControls,
    as_langchain_tools,
    call_tool,
    discover,
)
from mimic_learn.tracking import MlflowTracker, load_decisions, setup
from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.knobs import KNOBS

KNOB = "max_grad_norm"


@pytest.fixture()
def trainer() -> Trainer:
    return Trainer.from_config(TrainConfig(task="digits", epochs=3, lr=3e-3))


def stage(ctl: TrainerControls, value: float) -> str:
    reply = call_tool(f"set_{KNOB}", ctl, {KNOB: value, "reason": "test"})
    ctl.commit()
    return reply


def test_the_knob_is_one_table_entry_that_starts_off():
    knob = KNOBS[KNOB]
    assert knob.default == 0.0 and knob.off == 0.0 and knob.trust == "factor" and knob.scale == "log"
    assert list(KNOBS)[:4] == ["lr", "dropout", "weight_decay", "alpha"]  # the four knobs before it


def test_bounds_allowed_range_and_rejection_name_the_range_and_current_value(trainer):
    assert Bounds().max_grad_norm == (0.0, 100.0) and Bounds().max_grad_norm_max_factor == 10.0
    ctl = TrainerControls(trainer)
    assert ctl.current(KNOB) == 0.0
    assert ctl.allowed_range(KNOB) == (0.0, 100.0)  # from off: anywhere within the bounds
    assert stage(ctl, 1.0).startswith("max_grad_norm 0 -> 1 staged; applies from the next epoch")
    assert ctl.current(KNOB) == 1.0 and ctl.allowed_range(KNOB) == pytest.approx((0.1, 10.0))
    with pytest.raises(ToolArgumentError) as exc:
        call_tool(f"set_{KNOB}", ctl, {KNOB: 50, "reason": "too far"})
    assert "max_grad_norm=50 is out of range [0.1, 10]; current max_grad_norm is 1" in str(exc.value)
    assert exc.value.argument == KNOB and not ctl.pending
    stage(ctl, 0.0)  # off is always allowed, whatever the trust region
    assert ctl.current(KNOB) == 0.0
    narrow = TrainerControls(trainer, Bounds(max_grad_norm=(0.0, 5.0)))
    with pytest.raises(
        ToolArgumentError, match=r"max_grad_norm=8 is out of range \[0, 5\]; current max_grad_norm is 0"
    ):
        call_tool(f"set_{KNOB}", narrow, {KNOB: 8.0, "reason": "beyond the user's bounds"})


def test_the_tool_is_listed_with_the_entrys_documentation(trainer):
    spec = discover()[f"set_{KNOB}"]
    assert spec.mutating and spec.description == KNOBS[KNOB].doc
    argument = spec.args.model_json_schema()["properties"][KNOB]
    assert (
        "Absolute bounds [0, 100]" in argument["description"] and "0 turns it off" in argument["description"]
    )
    tools = {t.name: t for t in as_langchain_tools(TrainerControls(trainer))}
    assert set(tools[f"set_{KNOB}"].args) == {KNOB, "reason"}
    assert tools[f"set_{KNOB}"].live_bounds() == {KNOB: (0.0, 100.0, 0.0)}


def _step_grad_norms(trainer: Trainer) -> list[float]:
    """The total gradient norm the optimizer saw at each step of one epoch."""
    seen, step = [], trainer.optimizer.step
    params = list(trainer.model.parameters())

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in params if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    try:
        trainer.run_epoch()
    finally:
        trainer.optimizer.step = step
    return seen


def test_the_trainer_clips_gradients_before_each_step(trainer):
    unclipped = _step_grad_norms(trainer)
    assert max(unclipped) > 0.1
    ctl = TrainerControls(trainer)
    stage(ctl, 0.05)
    clipped = _step_grad_norms(trainer)
    assert max(clipped) <= 0.05 * (1 + 1e-4)
    assert trainer.history[-1].knobs[KNOB] == 0.05 and trainer.history[-2].knobs[KNOB] == 0.0


def test_checkpoints_save_and_restore_it(trainer, tmp_path):
    ctl = TrainerControls(trainer)
    stage(ctl, 2.0)
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    stage(ctl, 0.5)
    assert ctl.current(KNOB) == 0.5
    trainer.restore(Trainer.load_checkpoint(path))
    assert ctl.current(KNOB) == 2.0
    assert trainer.checkpoint()["knobs"][KNOB] == 2.0


class Recorder(ScriptedChatModel):
    """A scripted controller that keeps the first prompt of each decision."""

    prompts: list[str] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        if not self.prompts or self.prompts[-1] != human.content:
            self.prompts.append(str(human.content))
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_a_tracked_run_shows_it_in_the_prompt_metrics_and_decisions_table(tmp_path):
    setup(f"sqlite:///{tmp_path / 'mlflow.db'}", "knobs")
    try:
        call = {"name": f"set_{KNOB}", "args": {KNOB: 1.5, "reason": "spiky loss"}}
        model = Recorder(decisions=[{"epoch": 1, "tool_calls": [call]}], prompts=[])
        spec = RunSpec(
            train=TrainConfig(task="digits", epochs=3, lr=3e-3),
            controller="custom",
            agent=AgentConfig(prompt="full"),
            state_db=str(tmp_path / "graph.sqlite"),
        )
        runner = AgentRunner(spec, model=model)
        tracker = MlflowTracker(arm="clip", log_model=False, traces=False)
        runner.observers.append(tracker)
        runner.run()
        runner.close()
        history = mlflow.MlflowClient().get_metric_history(tracker.run_id, KNOB)
        assert sorted((m.step, m.value) for m in history) == [(1, 0.0), (2, 1.5), (3, 1.5)]
        rows = [r for r in load_decisions(tracker.run_id) if r["tool"] == f"set_{KNOB}"]
        assert len(rows) == 1 and rows[0]["accepted"] and rows[0]["epoch"] == 1
        assert rows[0]["reply"].startswith("max_grad_norm 0 -> 1.5 staged")
        assert [c["key"] for c in json.loads(rows[0]["changes"])] == [KNOB]
        # the prompt names a knob that is on, and leaves it out while it is off
        assert "max grad norm" not in model.prompts[0]
        assert "alpha 0, max grad norm 1.5." in model.prompts[1]
    finally:
        mlflow.set_tracking_uri(None)
