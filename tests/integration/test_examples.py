"""The task-family examples at reduced size: each learns (error down / return up from its first epoch), a
scripted decision reaches the user's own objects (the optimizer's lr; the RL loop's entropy coefficient, a user
knob), and each runs from its command line with ``--controller rules`` and logs to MLflow. ``local`` (the
embedded model) is exercised in the slow suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mlflow
import pytest

from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.tracking import load_decisions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _script(epoch: int, *calls: tuple[str, dict]) -> ScriptedChatModel:
    return ScriptedChatModel(
        decisions=[
            {
                "epoch": epoch,
                "tool_calls": [{"name": n, "args": {**a, "reason": "scripted"}} for n, a in calls],
            }
        ]
    )


def _store(tmp_path) -> dict:
    return {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "state_db": str(tmp_path / "graph.sqlite")}


def test_example_regression_learns_and_a_scripted_set_lr_reaches_its_optimizer(tmp_path):
    ex = _example("regression_diabetes")
    result = ex.train(_script(3, ("set_lr", {"lr": 0.001})), ex.Hyper(epochs=5), **_store(tmp_path))
    assert (
        result["val_mse"][-1] < 0.8 * result["start_mse"]
    )  # learned: error well below the untrained model's
    assert result["val_mse"][-1] < result["val_mse"][0]
    assert result["lr"] == pytest.approx(0.001)  # the decision after epoch 3 reached the user's optimizer
    lrs = [o.report.lr for o in result["steering"].runner.outcomes]
    assert lrs == pytest.approx([0.003, 0.003, 0.003, 0.001, 0.001])
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "val_mse")
    assert [m.value for m in history] == pytest.approx(result["val_mse"])


def test_example_rl_learns_and_scripted_lr_and_entropy_knob_reach_its_objects(tmp_path):
    ex = _example("rl_cartpole")
    model = _script(4, ("set_lr", {"lr": 0.008}), ("set_entropy_coef", {"entropy_coef": 0.02}))
    result = ex.train(model, ex.Hyper(epochs=6), **_store(tmp_path))
    returns = result["mean_return"]
    assert returns[-1] > 1.5 * returns[0]  # learned (25 -> 74 with these seeds)
    assert result["lr"] == pytest.approx(0.008) and result["entropy_coef"] == pytest.approx(0.02)
    rows = load_decisions(result["run_id"])
    staged = {r["tool"]: r["reply"] for r in rows if r["epoch"] == 4}
    assert staged["set_entropy_coef"].startswith("entropy_coef 0.01 -> 0.02 staged")
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "entropy_coef")
    assert [m.value for m in history] == pytest.approx([0.01] * 4 + [0.02] * 2)  # the knob's value per epoch


def test_example_user_knob_rejects_out_of_range_with_range_and_current_value(tmp_path):
    ex = _example("rl_cartpole")
    model = _script(1, ("set_entropy_coef", {"entropy_coef": 0.5}))
    result = ex.train(
        model, ex.Hyper(epochs=2, updates_per_epoch=1), track=False, state_db=str(tmp_path / "g")
    )
    assert result["entropy_coef"] == pytest.approx(0.01)  # unchanged
    call = result_calls(result)[0]
    assert not call["accepted"]
    assert "entropy_coef=0.5 is out of range [0, 0.1]; current entropy_coef is 0.01" in call["reply"]


def result_calls(result) -> list[dict]:
    return [c for o in result["steering"].runner.outcomes if o.decision for c in o.decision["calls"]]


@pytest.mark.parametrize("name,epochs", [("regression_diabetes", 3), ("rl_cartpole", 2)])
def test_example_command_line_with_rules_logs_to_mlflow(tmp_path, monkeypatch, capsys, name, epochs):
    ex = _example(name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)  # the graph state goes to ./.mimic
    argv = [f"{name}.py", "--controller", "rules", "--epochs", str(epochs), "--tracking-uri", uri]
    monkeypatch.setattr(sys, "argv", argv)
    ex.main()
    out = capsys.readouterr().out
    run_id = out.rsplit("MLflow run ", 1)[1].split()[0]
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["controller"] == "rules"
    assert len(load_decisions(run_id)) >= epochs - 1  # a decision at every epoch but the last


@pytest.mark.slow
@pytest.mark.parametrize("name", ["regression_diabetes", "rl_cartpole"])
def test_example_command_line_with_the_local_model(tmp_path, monkeypatch, capsys, name):
    ex = _example(name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys, "argv", [f"{name}.py", "--controller", "local", "--epochs", "3", "--tracking-uri", uri]
    )
    ex.main()
    run_id = capsys.readouterr().out.rsplit("MLflow run ", 1)[1].split()[0]
    rows = load_decisions(run_id)
    assert {r["epoch"] for r in rows} == {1, 2} and all(r["tool"] for r in rows)  # the model called tools
