"""Steering a user's own loop (``mimic_learn.integrations.Steering`` over ``LoopTrainer``): a regression loop
with its own metric names, decisions reaching the user's optimizer/model, MLflow, human approval."""

# ruff: noqa: E402, I001  (the example block keeps its own imports, in the README's order)
from __future__ import annotations

# --- README example start: plain loop ---
# A regression loop you already have; the controller sees `val_mse` and decides at each epoch's end.
import torch
from torch import nn

from mimic_learn.integrations import Steering


def train_regression(controller="rules", epochs=6, **steering_options):
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(512)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steering = Steering(
        model,
        optimizer,
        epochs=epochs,
        controller=controller,
        monitor="val_mse",
        mode="min",
        **steering_options,
    )
    for _ in range(epochs):
        model.train()
        for i in range(0, 384, 32):
            loss = nn.functional.mse_loss(model(x[i : i + 32]).squeeze(1), y[i : i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_mse = nn.functional.mse_loss(model(x[384:]).squeeze(1), y[384:]).item()
        steering.epoch_end({"train_mse": loss.item(), "val_mse": val_mse})  # decide; applied on return
    steering.close()
    return model, optimizer, steering


# --- README example end: plain loop ---

import copy
import json

import mlflow
import pytest
from langchain_core.messages import HumanMessage

from mimic_learn.agents.approval import ScriptedApprover, TerminalApprover, parse_assignments
from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.training.loop import LoopTrainer


def _script(*decisions) -> ScriptedChatModel:
    return ScriptedChatModel(
        decisions=[
            {"epoch": epoch, "tool_calls": [{"name": name, "args": {**args, "reason": "test"}}]}
            for epoch, name, args in decisions
        ]
    )


@pytest.fixture
def store(tmp_path):
    return {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "state_db": str(tmp_path / "graph.sqlite")}


def test_scripted_set_lr_reaches_the_users_optimizer_and_mlflow_has_metrics_and_traces(store):
    model, optimizer, steering = train_regression(
        controller=_script((2, "set_lr", {"lr": 0.02}), (4, "set_dropout", {"dropout": 0.3})), **store
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    assert model[2].p == pytest.approx(0.3)
    outcomes = steering.runner.outcomes
    assert [o.report.lr for o in outcomes] == pytest.approx([0.05, 0.05, 0.02, 0.02, 0.02, 0.02])
    assert outcomes[1].decision["changes"][0]["key"] == "lr"
    # the user's numbers, under the user's names; no classification numbers invented
    client = mlflow.MlflowClient(store["tracking_uri"])
    run = client.get_run(steering.run_id)
    assert {"val_mse", "train_mse", "lr", "dropout", "tool_calls"} <= set(run.data.metrics)
    assert "val_acc" not in run.data.metrics and "test_acc" not in run.data.metrics
    val = [m.value for m in client.get_metric_history(steering.run_id, "val_mse")]
    assert val == pytest.approx([o.report.metrics["val_mse"] for o in outcomes])
    assert run.data.tags["mimic.data"] == "user loop"
    params = run.data.params  # the user's objects, not our TrainConfig's defaults
    assert params["optimizer"] == "SGD" and params["lr"] == "0.05" and params["monitor"] == "val_mse"
    assert params["model"] == "Sequential" and "batch_size" not in params
    grads = client.get_metric_history(steering.run_id, "grad_norm/0.weight")
    assert len(grads) == 6 and all(m.value > 0 for m in grads)  # measured by the optimizer hooks
    mlflow.set_tracking_uri(store["tracking_uri"])
    traces = mlflow.search_traces(locations=[run.info.experiment_id], return_type="list")
    assert len(traces) == 5  # one per decision, none after the last epoch
    assert all(t.info.request_metadata.get("mlflow.sourceRun") == steering.run_id for t in traces)
    assert "decisions.json" in [a.path for a in client.list_artifacts(steering.run_id)]


def test_the_prompt_shows_the_loops_own_metrics_and_what_it_is_judged_by(store):
    _, _, steering = train_regression(controller=_script(), epochs=3, **store)
    human = next(m for m in steering.runner.outcomes[1].state["messages"] if isinstance(m, HumanMessage))
    assert "val_mse" in human.content and "lower is better" in human.content
    assert "validation accuracy" not in human.content and "n/a" not in human.content


def test_rules_controller_halves_lr_when_the_monitored_metric_plateaus(store):
    """No val_loss here: the rules judge the loop's own `val_mse` (mode "min")."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steering = Steering(
        model, optimizer, epochs=6, controller="rules", monitor="val_mse", mode="min", **store
    )
    decisions = []
    for value in (1.0, 0.5, 0.5, 0.5, 0.5, 0.5):  # improves once, then stalls
        optimizer.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        decisions.append(steering.epoch_end({"val_mse": value}).decision)
    steering.close()
    first = [c for d in decisions if d for c in d["changes"]]
    assert first and first[0]["key"] == "lr" and "val_mse has not improved" in first[0]["reason"]
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_mode_max_metric_plateau_and_improvement(store):
    """A "max" metric (e.g. a reward): rising -> keep; flat -> halve lr."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    steering = Steering(model, optimizer, epochs=6, controller="rules", monitor="reward", mode="max", **store)
    kept = (
        steering.epoch_end({"reward": 1.0}),
        steering.epoch_end({"reward": 2.0}),
        steering.epoch_end({"reward": 3.0}),
    )
    assert all(not o.decision["changes"] for o in kept)
    assert not steering.epoch_end({"reward": 3.0}).decision["changes"]  # one flat epoch: patience is 2
    flat = steering.epoch_end({"reward": 3.0})
    assert (
        flat.decision["changes"][0]["key"] == "lr"
        and "reward has not improved" in flat.decision["changes"][0]["reason"]
    )
    steering.close()


def test_missing_monitored_metric_is_a_clear_error_and_changes_nothing(store):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steering = Steering(model, optimizer, epochs=3, monitor="val_mse", **store)
    with pytest.raises(ValueError, match="val_mse.*missing.*mse"):
        steering.epoch_end({"mse": 1.0})
    assert steering.trainer.epoch == 0 and not steering.runner.outcomes
    with pytest.raises(ValueError, match="'val_mse'=.*not a number"):
        steering.epoch_end({"val_mse": "abc"})
    steering.epoch_end({"val_mse": 1.0})  # the run goes on
    assert steering.trainer.epoch == 1
    steering.close()


def test_revert_on_harm_restores_the_users_model_and_optimizer(store):
    """A decision followed by a worse monitored number is undone in the user's own objects."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    steering = Steering(
        model,
        optimizer,
        epochs=4,
        controller=_script((1, "set_lr", {"lr": 0.1})),
        monitor="val_mse",
        reflection="revert_on_harm",
        **store,
    )

    def epoch():
        optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()

    epoch()
    steering.epoch_end({"val_mse": 1.0})  # decision: lr 0.01 -> 0.1
    after_decision = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    epoch()
    outcome = steering.epoch_end(
        {"val_mse": 2.0}
    )  # worse: revert to the state after epoch 1, before the decision
    assert outcome.state["reverted"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    for k, v in after_decision[0].items():
        assert torch.equal(model.state_dict()[k], v)  # the weights of the epoch-1 boundary
    assert optimizer.state_dict()["state"][0]["step"] == after_decision[1]["state"][0]["step"]
    steering.close()


def test_no_decision_means_the_users_optimizer_steps_exactly_as_without_steering(store):
    def run(with_steering: bool):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        steering = (
            Steering(model, optimizer, epochs=2, controller=_script(), monitor="loss", track=False, **store)
            if with_steering
            else None
        )
        for _ in range(2):
            for _ in range(5):
                optimizer.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                optimizer.step()
            if steering:
                steering.epoch_end({"loss": loss.item()})
        if steering:
            steering.close()
        return model.state_dict()

    plain, steered = run(False), run(True)
    assert all(torch.equal(plain[k], steered[k]) for k in plain)


def test_modulated_update_blends_each_step_of_the_users_loop():
    """(1-a)*base_step + a*delta/N on every optimizer step, through the step hooks."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = LoopTrainer(model, optimizer, monitor="loss", steps_per_epoch=4)
    delta = torch.tensor([[0.4, -0.8]])
    trainer.set_alpha(0.5)
    trainer.set_delta({"weight": delta})
    for _ in range(4):
        w = model.weight.detach().clone()
        optimizer.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        grad = model.weight.grad.clone()
        optimizer.step()
        expected = w + 0.5 * (-0.1 * grad) + 0.5 * delta / 4
        assert torch.allclose(model.weight, expected)
    report = trainer.end_epoch({"loss": 0.0})
    assert report.delta_layers == ["weight"] and report.steps == 4
    w = model.weight.detach().clone()  # the delta was for one epoch: the next step is plain SGD
    optimizer.zero_grad()
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert torch.allclose(model.weight, w - 0.1 * torch.ones(1, 2))
    trainer.detach()


def test_set_lr_survives_a_lambda_schedule_as_frameworks_build_it():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    trainer = LoopTrainer(model, optimizer, scheduler, monitor="loss")
    optimizer.step()
    scheduler.step()  # lr 0.1 * 1/2
    trainer.end_epoch({"loss": 1.0})
    trainer.set_lr(0.01)  # from 0.05: x0.2, and the schedule continues from the new value
    optimizer.step()
    scheduler.step()  # 0.1 * 0.2 * 1/3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 / 3)
    trainer.detach()


def test_a_wrapped_optimizer_is_refused_with_what_to_pass():
    class Wrapper:
        def __init__(self, opt):
            self.optimizer = opt

    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer.*inner"):
        LoopTrainer(model, Wrapper(torch.optim.SGD(model.parameters(), lr=0.1)))


def test_a_loop_that_raises_ends_the_mlflow_run_as_failed(store):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with Steering(model, optimizer, epochs=3, monitor="loss", **store) as steering:
            steering.epoch_end({"loss": 1.0})
            raise RuntimeError("boom")
    run = mlflow.MlflowClient(store["tracking_uri"]).get_run(steering.run_id)
    assert run.info.status == "FAILED" and "boom" in run.data.tags["mimic.error"]
    assert not steering.trainer._hooks  # the user's optimizer is left without our hooks


# ---------------------------------------------------------------- human approval


def test_approval_accept_edit_reject_reach_the_optimizer_and_mlflow(store, tmp_path):
    approver = ScriptedApprover(
        [
            "accept",
            {"action": "edit", "edits": {0: {"lr": 0.03}}},
            {"action": "reject", "reason": "too aggressive"},
            {
                "action": "edit",
                "edits": {"0": {"lr": 99.0}},
            },  # out of range: the tool rejects it, nothing changes
        ]
    )
    model, optimizer, steering = train_regression(
        controller=_script(
            (1, "set_lr", {"lr": 0.02}),
            (2, "set_lr", {"lr": 0.04}),
            (3, "set_dropout", {"dropout": 0.4}),
            (4, "set_lr", {"lr": 0.01}),
        ),
        epochs=6,
        approve=True,
        approver=approver,
        **store,
    )
    assert [p["tool_calls"][0]["tool"] for p in approver.seen] == [
        "set_lr",
        "set_lr",
        "set_dropout",
        "set_lr",
    ]
    lrs = [o.report.lr for o in steering.runner.outcomes]
    assert lrs[:5] == pytest.approx([0.05, 0.02, 0.03, 0.03, 0.03])  # accepted 0.02, edited to 0.03
    assert model[2].p == pytest.approx(0.1)  # the dropout change was rejected
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03)  # the bad edit changed nothing
    decisions = [o.decision for o in steering.runner.outcomes]
    assert [d["reviews"][0]["action"] for d in decisions[:4]] == ["accept", "edit", "reject", "edit"]
    assert decisions[2]["reviews"][0]["reason"] == "too aggressive" and not decisions[2]["changes"]
    assert decisions[3]["calls"][0]["args"]["lr"] == 99.0 and not decisions[3]["calls"][0]["accepted"]
    assert decisions[4]["reviews"] == []  # nothing proposed (no script entry): nothing to review
    client = mlflow.MlflowClient(store["tracking_uri"])
    metrics = client.get_run(steering.run_id).data.metrics
    assert metrics["review_rejects"] == 0.0  # last logged decision (epoch 5) had no review
    rejects = [m.value for m in client.get_metric_history(steering.run_id, "review_rejects")]
    assert rejects == [0.0, 0.0, 1.0, 0.0]
    path = client.download_artifacts(steering.run_id, "decisions.json", str(tmp_path))
    table = json.loads(open(path).read())
    column = table["columns"].index("review")
    reviews = [json.loads(row[column]) for row in table["data"] if row[column]]
    assert reviews[1][0]["action"] == "edit" and reviews[1][0]["proposed"][0]["args"]["lr"] == 0.04


def test_malformed_review_answer_is_recorded_as_a_rejection_not_an_accept(store):
    _, optimizer, steering = train_regression(
        controller=_script((1, "set_lr", {"lr": 0.02})),
        epochs=2,
        approve=True,
        approver=ScriptedApprover([{"action": "maybe"}]),
        **store,
    )
    review = steering.runner.outcomes[0].decision["reviews"][0]
    assert review["action"] == "reject" and "malformed" in review["reason"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_read_only_inspections_are_not_put_to_the_reviewer(store):
    script = ScriptedChatModel(
        decisions=[
            {
                "epoch": 1,
                "turns": [
                    [{"name": "inspect_history", "args": {}}],
                    [{"name": "set_lr", "args": {"lr": 0.02, "reason": "x"}}],
                ],
            }
        ]
    )
    approver = ScriptedApprover(["accept"])
    _, optimizer, _ = train_regression(controller=script, epochs=2, approve=True, approver=approver, **store)
    assert [p["tool_calls"][0]["tool"] for p in approver.seen] == ["set_lr"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_terminal_approver_reads_accept_edit_reject():
    answers = iter(["x", "e", "lr=0.001 reason=smaller", "r", "not now", "a"])
    asked = []

    def ask(prompt):
        asked.append(prompt)
        return next(answers)

    approver = TerminalApprover(ask=ask)
    proposal = {"epoch": 1, "tool_calls": [{"index": 0, "tool": "set_lr", "args": {"lr": 0.1}}]}
    assert approver(proposal) == {"action": "edit", "edits": {0: {"lr": 0.001, "reason": "smaller"}}}
    assert approver(proposal) == {"action": "reject", "reason": "not now"}
    assert approver(proposal) == "accept"
    with pytest.raises(ValueError, match="name=value"):
        parse_assignments("lr 0.1")


def test_cli_run_approve_asks_in_the_terminal_and_applies_the_answers(tmp_path):
    """`mimic-learn run --approve` on our own Trainer: accept, edit, reject typed at the prompt."""
    from typer.testing import CliRunner

    from mimic_learn.cli import app

    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"epoch": e, "tool_calls": [{"name": "set_lr", "args": {"lr": lr, "reason": "t"}}]}
                for e, lr in ((1, 0.002), (2, 0.004), (3, 0.0005))
            ]
        )
    )
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--controller",
            f"scripted:{script}",
            "--epochs",
            "4",
            "--approve",
            "--state-db",
            str(tmp_path / "g.sqlite"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--no-log-model",
        ],
        input="a\ne\nlr=0.003\nr\nnot now\n",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("[a]ccept, [e]dit a value, [r]eject?") == 3
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mimic-digits")
    child = next(
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mimic.role") == "child"
    )
    lrs = [m.value for m in client.get_metric_history(child.info.run_id, "lr")]
    assert lrs == pytest.approx([0.001, 0.002, 0.003, 0.003])  # accepted, edited, rejected
    assert [m.value for m in client.get_metric_history(child.info.run_id, "review_edits")] == [0, 1, 0]


def test_weight_decay_leaves_a_no_decay_group_alone():
    """Frameworks put biases in a group with weight decay 0 (Hugging Face does): it stays at 0."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(
        [{"params": [model.weight], "weight_decay": 0.01}, {"params": [model.bias], "weight_decay": 0.0}]
    )
    trainer = LoopTrainer(model, optimizer, monitor="loss")
    assert trainer.weight_decay == 0.01
    trainer.set_weight_decay(0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    trainer.detach()
    other = nn.Linear(2, 1)  # no group decays yet: all get it
    optimizer = torch.optim.SGD([{"params": [other.weight]}, {"params": [other.bias]}], lr=0.1)
    trainer = LoopTrainer(other, optimizer, monitor="loss")
    trainer.set_weight_decay(0.001)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.001, 0.001]
    trainer.detach()
