"""Counterfactual forks, keep_better, the oracle and the outcome dataset (digits, CPU, no network)."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mimic_learn.agents.oracle import parse_oracle
from mimic_learn.cli import app
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.tools.candidates import candidate_actions
from mimic_learn.tools.controls import TrainerControls
from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.fork import run_branch
from mimic_learn.training.outcomes import SCHEMA_VERSION, OutcomeRecord, read_jsonl


def _script(tmp_path, decisions: list[dict]) -> str:
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump({"decisions": decisions}))
    return f"scripted:{path}"


def _set_lr(epoch: int, lr: float) -> dict:
    return {"epoch": epoch, "tool_calls": [{"name": "set_lr", "args": {"lr": lr, "reason": "test"}}]}


def _runner(tmp_path, controller: str, epochs: int = 3, lr: float = 3e-3, **spec_kwargs) -> AgentRunner:
    reflection = spec_kwargs.pop("reflection", "counterfactual")
    tools = spec_kwargs.pop("tools", None)
    spec = RunSpec(
        train=TrainConfig(task="digits", epochs=epochs, lr=lr, dropout=0.2),
        controller=controller,
        agent=AgentConfig(reflection=reflection, tools=tools),
        state_db=str(tmp_path / f"g-{reflection}.sqlite"),
        **spec_kwargs,
    )
    return AgentRunner(spec)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_a_branch_that_changes_nothing_equals_the_real_epoch_bitwise():
    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=3, dropout=0.2))
    trainer.run_epoch()
    before = _weights(trainer)
    shadow = run_branch(trainer, trainer.checkpoint(), 1, trainer.run_epoch)
    # the trainer is exactly as before the branch
    assert trainer.epoch == 1 and len(trainer.history) == 1
    assert all(torch.equal(before[k], v) for k, v in _weights(trainer).items())
    real = trainer.run_epoch()
    assert shadow.last.val_loss == real.val_loss and shadow.last.train_loss == real.train_loss
    assert all(torch.equal(shadow.final_state["model"][k], v) for k, v in _weights(trainer).items())


def test_noop_forced_through_the_fork_gives_effect_exactly_zero(tmp_path):
    runner = _runner(tmp_path, "rules", epochs=3)  # rules keeps everything on this short run
    runner.step()
    fake = {"changes": [{"key": "lr", "value": "0.003", "reason": "forced", "tool": "set_lr"}], "calls": []}
    fork = runner.counterfactual.open(1, fake, {"epoch": 1}, "", runner.trainer.pre_decision[1])
    assert fork is not None and runner.counterfactual.shadow_epochs == 1
    outcome = runner.step()
    (verdict,) = outcome.counterfactual
    assert verdict["effect"] == 0.0 and verdict["val_loss_effect"] == 0.0
    runner.close()


def test_the_shadow_leaves_the_real_branch_bitwise_unchanged(tmp_path):
    decisions = [_set_lr(1, 1e-3), {"epoch": 2, "tool_calls": [
        {"name": "set_dropout", "args": {"dropout": 0.4, "reason": "test"}}]}]  # fmt: skip
    finals, curves = [], []
    for reflection in ("log_only", "counterfactual"):
        runner = _runner(tmp_path, _script(tmp_path, decisions), epochs=4, reflection=reflection)
        result = runner.run()
        finals.append(_weights(runner.trainer))
        curves.append([(o.report.val_loss, o.report.train_loss, o.report.lr) for o in result.epochs])
        if reflection == "counterfactual":
            assert [len(o.counterfactual) for o in result.epochs] == [0, 1, 1, 0]
            assert runner.shadow_epochs == 2 and len(runner.outcome_records) == 2
        runner.close()
    assert curves[0] == curves[1]
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_a_harmful_decision_shows_a_negative_effect_and_keep_better_undoes_it(tmp_path):
    # lr x10 at an already high lr (0.05 -> 0.5 with Adam) wrecks the next epoch
    for keep_better in (False, True):
        runner = _runner(
            tmp_path, _script(tmp_path, [_set_lr(1, 0.5)]), epochs=3, lr=0.05, keep_better=keep_better
        )
        runner.step()
        assert runner.trainer.lr == pytest.approx(0.5)
        (fork,) = runner.counterfactual.open_forks
        outcome = runner.step()
        (verdict,) = outcome.counterfactual
        assert verdict["effect"] < 0, verdict["text"]
        assert "vs not acting (same batches)" in verdict["text"] and "short-term" in verdict["text"]
        assert outcome.decision["reflection"].startswith("Decision after epoch 1 (lr 0.05\u21920.5)")
        prompt = next(m.content for m in outcome.state["messages"] if m.type == "human")
        assert "Measured effects of your recent decisions" in prompt and verdict["text"] in prompt
        if keep_better:
            assert verdict["kept"] == "without" and "keep_better" in verdict["text"]
            # the run continued from the branch without the decision: its weights and its lr
            assert runner.trainer.lr == pytest.approx(0.05)
            state = runner.trainer.model.state_dict()
            assert all(torch.equal(fork.shadow.final_state["model"][k], state[k]) for k in state)
            record = runner.outcome_records[-1]
            assert record.without_action.real and not record.with_action.real and record.effect < 0
            assert runner.step().report.lr == pytest.approx(0.05)
        else:
            assert verdict["kept"] == "with" and runner.trainer.lr == pytest.approx(0.5)
        runner.close()


def test_candidates_follow_the_bound_tools_and_skip_noops():
    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=2, dropout=0.2))
    trainer.run_epoch()
    names = [c.name for c in candidate_actions(TrainerControls(trainer), ["set_lr", "keep_current"])]
    assert names == ["keep", "lr_x0.1", "lr_x0.3", "lr_x3", "lr_x10"]
    every = [c.name for c in candidate_actions(TrainerControls(trainer))]
    assert "wd_to_0" not in every  # weight decay is already 0: a no-op
    assert "rollback" not in every  # nothing to undo
    assert {"wd_x10", "dropout_+0.1", "dropout_-0.1", "alpha0.2_grad_delta"} <= set(every)


def test_the_dry_runs_candidate_count_is_the_oracles_where_no_knob_is_at_a_bound():
    """--dry-run prices the oracle by candidates per decision; it must count what the oracle rolls out."""
    from mimic_learn.experiments import oracle_candidates
    from mimic_learn.experiments.arms import PAPER_TOOLS

    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=2, dropout=0.2))
    trainer.run_epoch()
    controls = TrainerControls(trainer)
    for tools in (PAPER_TOOLS, ("set_lr", "keep_current")):  # the paper's arms, the blog's
        assert oracle_candidates(tools) == len(candidate_actions(controls, list(tools))), tools
    # every tool: an upper bound (here weight decay is 0, so no wd_to_0, and there is nothing to roll back)
    assert oracle_candidates(None) == len(candidate_actions(controls)) + 2


def test_oracle_controller_strings():
    assert (
        parse_oracle("oracle") is None
        and parse_oracle("oracle:end") == "end"
        and parse_oracle("oracle:3") == 3
    )
    with pytest.raises(ValueError, match="oracle horizon must be 'end' or an integer >= 1"):
        parse_oracle("oracle:0")


def test_oracle_picks_the_planted_best_action(tmp_path):
    # lr 1e-4 with Adam learns slowly: of keep / lr x0.1 / x0.3 / x3 / x10, raising it most is best over the rest
    runner = _runner(
        tmp_path, "oracle:end", epochs=3, lr=1e-4, reflection="log_only", tools=["set_lr", "keep_current"]
    )
    runner.step()
    outcome = runner.step()
    assert outcome.oracle["candidates"] == ["keep", "lr_x0.1", "lr_x0.3", "lr_x3", "lr_x10"]
    assert outcome.oracle["chosen"] == "lr_x10" and outcome.oracle["horizon"] == 1
    assert outcome.decision["changes"][0]["key"] == "lr" and runner.trainer.lr == pytest.approx(
        1e-2
    )  # x10 at both boundaries
    trials = [r for r in runner.outcome_records if r.epoch == 2]
    best = max(trials, key=lambda r: r.with_action.monitor)
    assert best.chosen and best.action["name"] == "lr_x10" and best.effect > 0
    first = [r for r in runner.outcome_records if r.epoch == 1]
    assert {r.horizon for r in first} == {2} and first[0].rendered_report  # oracle:end: to the run's end
    assert outcome.shadow_epochs == 5 * 2 + 5 * 1  # candidates x horizon at each boundary
    runner.close()


def test_outcome_records_round_trip_through_mlflow_and_export_outcomes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    controller = _script(tmp_path, [_set_lr(1, 3e-4)])  # the CLI's lr is 1e-3
    result = CliRunner().invoke(
        app,
        ["run", "--task", "digits", "--epochs", "3", "--controller", controller, "--reflection",
         "counterfactual", "--tracking-uri", uri, "--experiment", "cf", "--state-db", str(tmp_path / "g.sqlite"),
         "--no-log-model", "--no-traces"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "reflect: Decision after epoch 1" in result.output
    assert "vs not acting (same batches)" in " ".join(result.output.split())
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cf"], filter_string="tags.`mimic.role` = 'child'")
    child = runs.run_id.iloc[0]
    client = mlflow.MlflowClient()
    effect = client.get_metric_history(child, "decision_effect")
    assert [m.step for m in effect] == [2]
    table = json.loads(open(client.download_artifacts(child, "decisions.json", str(tmp_path))).read())
    col = table["columns"].index("decision_effect")
    assert table["data"][0][col] == pytest.approx(effect[0].value)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app, ["export-outcomes", child, str(out), "--tracking-uri", uri], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    assert record.schema_version == SCHEMA_VERSION and record.kind == "fork" and record.source_run_id == child
    assert record.epoch == 1 and record.horizon == 1 and record.effect == pytest.approx(effect[0].value)
    assert record.with_action.real and not record.without_action.real
    assert record.report["lr"] == pytest.approx(1e-3) and "set_lr" in json.dumps(record.action)
    assert record.rendered_report and record.config["task"] == "digits"
    assert OutcomeRecord.from_json(record.to_json()) == record
    mlflow.set_tracking_uri(None)


def test_outcome_record_from_a_newer_schema_is_refused():
    with pytest.raises(ValueError, match="schema_version=99"):
        OutcomeRecord.from_dict({"schema_version": 99})


# ---------------------------------------------------------------------------------------------- a user's loop
def _steered_regression(reflection: str, epochs: int = 3):
    from mimic_learn.agents.scripted import ScriptedChatModel
    from mimic_learn.integrations import Steering

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.linspace(-1, 1, 8)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def train_one_epoch(epoch: int) -> dict[str, float]:
        order = torch.randperm(192, generator=torch.Generator().manual_seed(epoch))  # same batches per epoch
        for i in range(0, 192, 32):
            idx = order[i : i + 32]
            loss = torch.nn.functional.mse_loss(model(x[idx]).squeeze(1), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x[192:]).squeeze(1), y[192:]).item()
        return {"train_mse": loss.item(), "val_mse": val}

    script = ScriptedChatModel(
        decisions=[{"epoch": 1, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.01, "reason": "t"}}]}]
    )
    steering = Steering(
        model, optimizer, epochs=epochs, controller=script, monitor="val_mse", mode="min",
        reflection=reflection, train_epoch=train_one_epoch, track=False,
    )  # fmt: skip
    outcomes = [steering.epoch_end(train_one_epoch(e)) for e in range(1, epochs + 1)]
    steering.close()
    return model, outcomes, steering


def test_steering_measures_a_decision_with_a_user_train_epoch_callback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_cf, outcomes, steering = _steered_regression("counterfactual")
    (verdict,) = outcomes[1].counterfactual
    assert (
        verdict["monitor"] == "val_mse"
        and verdict["effect"] is not None
        and verdict["effect"] == verdict["effect"]
    )
    (record,) = steering.runner.outcome_records
    assert record.mode == "min" and record.with_action.metrics["val_mse"] == record.with_action.monitor
    model_plain, _, _ = _steered_regression("log_only")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model_cf.state_dict().values(), model_plain.state_dict().values(), strict=True)
    )


def test_counterfactual_needs_a_train_epoch_and_framework_callbacks_refuse_it(tmp_path, monkeypatch):
    from mimic_learn.integrations import Steering
    from mimic_learn.integrations._callback import SteeringCallback

    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="train_epoch"):
        Steering(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=2,
            reflection="counterfactual",
            track=False,
        )
    for kwargs in ({"reflection": "counterfactual"}, {"controller": "oracle:1"}):
        with pytest.raises(ValueError, match="cannot do from a callback"):
            SteeringCallback(**kwargs)


def test_bad_counterfactual_options_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="counterfactual_horizon=0 must be >= 1"):
        RunSpec(counterfactual_horizon=0)
    result = CliRunner().invoke(
        app,
        ["run", "--task", "digits", "--epochs", "2", "--controller", "rules", "--keep-better", "--no-track"],
    )
    assert result.exit_code == 2
    assert "act only with --reflection counterfactual; current --reflection is log_only" in " ".join(
        result.output.split()
    )


def test_the_oracle_is_a_one_line_experiment_arm():
    from mimic_learn.agents.providers import ProviderOptions
    from mimic_learn.experiments import Arm, arm_spec

    spec = arm_spec(Arm("oracle_end", "oracle:end"), TrainConfig(), "rules", "g.sqlite", ProviderOptions())
    assert spec.controller == "oracle:end"


def test_outcome_records_and_shadow_epochs_survive_resume(tmp_path):
    controller = _script(tmp_path, [_set_lr(1, 1e-3), _set_lr(2, 3e-3)])

    def spec() -> RunSpec:
        return RunSpec(
            train=TrainConfig(task="digits", epochs=4, lr=3e-3, checkpoint_dir=str(tmp_path / "ckpt")),
            controller=controller,
            agent=AgentConfig(reflection="counterfactual"),
            state_db=str(tmp_path / "g.sqlite"),
            thread_id="resume-cf",
        )

    first = AgentRunner(spec())
    first.step(), first.step(), first.step()  # two decisions made, the first one measured
    records = [r.to_dict() for r in first.outcome_records]
    first.close()
    again = AgentRunner(spec())
    assert again.load_resume_state() == 3
    assert [r.to_dict() for r in again.outcome_records] == records and len(records) == 2
    assert again.shadow_epochs == 2
    again.close()
