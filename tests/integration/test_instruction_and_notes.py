"""The user's words reach the controller: an instruction for the whole run (``--instruction``,
``Steering(instruction=...)``, sweep arms) and notes queued while it runs (``mimic-learn note``, ``steering.note``,
the reviewer's note). Both sit in the prompt's trusted sections, are logged (MLflow param, traces, decisions
table), and a note is seen by exactly one decision. Also the Trainer's objectives beyond accuracy (``--monitor``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from langchain_core.messages import HumanMessage
from torch import nn
from typer.testing import CliRunner

from mimic_learn.agents.approval import ScriptedApprover, TerminalApprover
from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.cli import app
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.graphs.spec import PARAM_LIMIT, spec_from_params
from mimic_learn.integrations import Steering
from mimic_learn.prompts.templates import INSTRUCTION_HEADING, NOTES_HEADING
from mimic_learn.tracking import MlflowTracker, load_decisions
from mimic_learn.training import TrainConfig
from mimic_learn.training.trainer import Trainer

from ..prompt_parts import section, split_prompt

INSTRUCTION = "Recall on class 7 matters most; avoid raising the lr"


class Recorder(ScriptedChatModel):
    """A scripted controller that keeps every prompt it was shown (the first turn of each decision)."""

    prompts: list[str] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        if not self.prompts or self.prompts[-1] != human.content:
            self.prompts.append(str(human.content))
        return super()._generate(messages, stop, run_manager, **kwargs)


def _flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def _script(*entries) -> list[dict]:
    return [
        {"epoch": e, "tool_calls": [{"name": "set_lr", "args": {"lr": lr, "reason": "scripted"}}]}
        for e, lr in entries
    ]


def _regression(steering: Steering, epochs: int, between=None) -> None:
    """A small regression loop; ``between(epoch)`` runs after each epoch_end (another terminal, say)."""
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    model, optimizer = steering.trainer.model, steering.trainer.optimizer
    for epoch in range(1, epochs + 1):
        for i in range(0, 192, 32):
            loss = nn.functional.mse_loss(model(x[i : i + 32]).squeeze(1), y[i : i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = nn.functional.mse_loss(model(x[192:]).squeeze(1), y[192:]).item()
        steering.epoch_end({"train_mse": loss.item(), "val_mse": val})
        if between is not None:
            between(epoch)


def _steering(tmp_path, model, epochs=4, **kwargs) -> Steering:
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    return Steering(
        net,
        torch.optim.SGD(net.parameters(), lr=0.05),
        epochs=epochs,
        controller=model,
        monitor="val_mse",
        mode="min",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        state_db=str(tmp_path / "graph.sqlite"),
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------ instruction
def test_instruction_is_in_every_prompt_as_trusted_text_in_mlflow_params_and_in_each_trace(tmp_path):
    recorder = Recorder(decisions=_script((1, 0.04)))
    steering = _steering(tmp_path, recorder, epochs=4, instruction=INSTRUCTION)
    _regression(steering, 4)
    steering.close()

    assert len(recorder.prompts) == 3  # one decision per epoch but the last
    for prompt in recorder.prompts:
        assert section(prompt, INSTRUCTION_HEADING) == [INSTRUCTION]  # its own section, outside the data
        _, blocks = split_prompt(prompt)
        assert blocks and all(INSTRUCTION not in b for b in blocks)
    run = mlflow.MlflowClient().get_run(steering.run_id)
    assert run.data.params["instruction"] == INSTRUCTION
    traces = mlflow.search_traces(locations=[run.info.experiment_id], return_type="list")
    assert len(traces) == 3
    for trace in traces:
        assert trace.info.tags["mimic.instruction"] == INSTRUCTION
        assert INSTRUCTION in trace.to_json()  # the prompt the model was sent is in the trace
    assert steering.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)


def test_instruction_param_holds_the_full_text_and_is_cut_only_beyond_mlflows_limit(tmp_path):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    assert PARAM_LIMIT == MAX_PARAM_VAL_LENGTH  # the installed mlflow's limit
    exact = "x" * PARAM_LIMIT
    assert RunSpec(agent=AgentConfig(instruction=exact)).as_params()["instruction"] == exact
    long = "y" * (PARAM_LIMIT + 500)
    cut = RunSpec(agent=AgentConfig(instruction=long)).as_params()["instruction"]
    assert len(cut) == PARAM_LIMIT and cut.startswith("y" * 5000) and f"{len(long)} characters" in cut
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("limit")
    with mlflow.start_run() as run:  # the store takes it whole
        mlflow.log_params({"instruction": exact})
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.params["instruction"] == exact
    # resume rebuilds it from the params
    assert spec_from_params({"instruction": INSTRUCTION}).agent.instruction == INSTRUCTION
    assert spec_from_params({}).agent.instruction is None


def test_instruction_options_of_run_refuse_both_or_empty_and_read_a_file_and_monitor_is_logged(tmp_path):
    runner = CliRunner()
    both = runner.invoke(app, ["run", "--instruction", "a", "--instruction-file", str(tmp_path / "x.txt")])
    assert both.exit_code == 2 and "not both" in _flat(both.output)
    empty = runner.invoke(app, ["run", "--instruction", "  "])
    assert empty.exit_code == 2 and "--instruction is empty" in _flat(empty.output)
    missing = runner.invoke(app, ["run", "--instruction-file", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "does not exist" in _flat(missing.output)

    file = tmp_path / "instruction.txt"
    file.write_text(INSTRUCTION + "\n")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(_script((1, 0.002))))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(
        app,
        ["run", "--controller", f"scripted:{script}", "--epochs", "2", "--instruction-file", str(file), "--monitor", "recall:3",
         "--state-db", str(tmp_path / "g.sqlite"), "--tracking-uri", uri, "--no-log-model", "--no-traces"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    child = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("mimic-digits").experiment_id])
        if r.data.tags.get("mimic.role") == "child"
    )
    assert child.data.params["instruction"] == INSTRUCTION
    assert child.data.params["monitor"] == "recall_class_3"  # --monitor, normalised, is logged and resumable
    assert len(client.get_metric_history(child.info.run_id, "recall_class_3")) == 2


def test_instruction_of_a_sweep_arm_reaches_its_runs():
    from mimic_learn.experiments import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "name": "s",
            "arms": [
                {"name": "careful", "controller": "rules", "instruction": INSTRUCTION},
                {"name": "plain", "controller": "rules"},
            ],
        }
    )
    cells = {c.arm.name: c.spec for c in spec.cells(Path("."), 1, Path("/tmp"))}
    assert cells["careful"].agent.instruction == INSTRUCTION
    assert cells["plain"].agent.instruction is None
    assert cells["careful"].as_params()["instruction"] == INSTRUCTION


def test_instruction_with_memory_reflection_points_at_the_last_decision_and_its_direction(tmp_path):
    recorder = Recorder(decisions=_script((1, 0.1), (2, 0.08)))
    steering = _steering(
        tmp_path, recorder, epochs=3, instruction=INSTRUCTION, reflection="memory", track=False
    )
    _regression(steering, 3)
    steering.close()
    second = recorder.prompts[1]
    _, blocks = split_prompt(second)
    reflection = blocks[1]  # the reflection policy's text: quoted data, not a trusted section
    assert "Against the instruction above: the last decision (after epoch 1) was lr 0.05 -> 0.1 (raised)" in (
        reflection
    )
    assert section(second, INSTRUCTION_HEADING) == [INSTRUCTION]


def test_instruction_in_the_lightning_and_hf_callbacks_goes_to_steering():
    from mimic_learn.integrations._callback import SteeringCallback

    callback = SteeringCallback(controller="rules", instruction=INSTRUCTION, track=False)
    net = nn.Linear(2, 1)
    callback._start(net, torch.optim.SGD(net.parameters(), lr=0.1), None, periods=3, step=0)
    assert callback.steering.runner.spec.agent.instruction == INSTRUCTION
    callback._finish()


# ------------------------------------------------------------------------------------------------ notes
def _note_cli(run_id: str, text: str, uri: str) -> subprocess.CompletedProcess:
    """``mimic-learn note`` in a process of its own, as from another terminal."""
    return subprocess.run(
        [sys.executable, "-m", "mimic_learn.cli", "note", run_id, text, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_note_from_another_process_is_seen_once_and_recorded_with_its_time(tmp_path):
    recorder = Recorder(decisions=[])
    steering = _steering(tmp_path, recorder, epochs=4)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sent = {}

    def other_terminal(epoch):
        if epoch == 1:
            done = _note_cli(steering.run_id, "lr=0.02 looks right to me", uri)
            sent["out"] = done.stdout + done.stderr
            assert done.returncode == 0, sent["out"]

    _regression(steering, 4, between=other_terminal)
    steering.close()
    assert "its next decision sees it once" in _flat(sent["out"])
    first, second, third = recorder.prompts
    assert section(first, NOTES_HEADING) == []
    lines = section(second, NOTES_HEADING)
    assert len(lines) == 1 and lines[0].endswith("UTC: lr=0.02 looks right to me")
    assert section(third, NOTES_HEADING) == []  # once
    rows = load_decisions(steering.run_id)
    noted = {r["epoch"]: json.loads(r["notes"]) for r in rows if r["notes"]}
    assert list(noted) == [2]
    assert noted[2][0]["text"] == "lr=0.02 looks right to me" and noted[2][0]["time"].startswith("20")
    traces = mlflow.search_traces(
        locations=[mlflow.get_run(steering.run_id).info.experiment_id], return_type="list"
    )
    tagged = {t.info.tags["epoch"]: t.info.tags.get("mimic.notes") for t in traces}
    assert tagged == {"1": None, "2": json.dumps(["lr=0.02 looks right to me"]), "3": None}


def test_note_to_a_finished_run_is_refused_and_nothing_is_queued(tmp_path):
    steering = _steering(tmp_path, Recorder(decisions=[]), epochs=2)
    _regression(steering, 2)
    steering.close()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["note", steering.run_id, "too late", "--tracking-uri", uri])
    assert result.exit_code == 2
    assert f"run {steering.run_id} already finished" in _flat(result.output)
    tags = mlflow.MlflowClient(uri).get_run(steering.run_id).data.tags
    assert not [k for k in tags if k.startswith("mimic.note.")]
    empty = CliRunner().invoke(app, ["note", steering.run_id, " ", "--tracking-uri", uri])
    assert empty.exit_code == 2 and "the note is empty" in _flat(empty.output)
    unknown = CliRunner().invoke(app, ["note", "no-such-run", "x", "--tracking-uri", uri])
    assert unknown.exit_code == 2 and "is not in" in _flat(unknown.output)


def test_note_python_api_and_the_reviewers_note_each_reach_one_decision(tmp_path):
    recorder = Recorder(decisions=_script((1, 0.04), (2, 0.03)))
    answers = [{"action": "accept", "note": "from the reviewer"}, "accept"]
    steering = _steering(
        tmp_path, recorder, epochs=4, approve=True, approver=ScriptedApprover(answers), track=False
    )
    steering.note("from python")
    _regression(steering, 4)
    steering.close()
    assert [line.split(": ", 1)[1] for line in section(recorder.prompts[0], NOTES_HEADING)] == ["from python"]
    assert [line.split(": ", 1)[1] for line in section(recorder.prompts[1], NOTES_HEADING)] == [
        "from the reviewer"
    ]
    assert section(recorder.prompts[2], NOTES_HEADING) == []
    decisions = [o.decision for o in steering.runner.outcomes if o.decision]
    assert [[n["source"] for n in d["notes"]] for d in decisions] == [["python"], ["reviewer"], []]
    with pytest.raises(ValueError, match="non-empty"):
        steering.runner.add_note("  ")


def test_note_the_terminal_reviewer_can_type_one():
    asked = iter(["n", "mind class 7", "a"])
    answer = TerminalApprover(ask=lambda prompt: next(asked))({"epoch": 1, "tool_calls": []})
    assert answer == {"action": "accept", "note": "mind class 7"}


def test_note_to_a_killed_run_is_seen_after_resume(tmp_path):
    """`mimic-learn run` and `resume` use AgentRunner + MlflowTracker: a run that died after epoch 2 gets a
    note, and the first decision after the resume sees it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("notes")

    def spec():
        return RunSpec(
            train=TrainConfig(task="digits", epochs=4, lr=3e-3, checkpoint_dir=str(tmp_path / "ckpt")),
            controller="custom",
            agent=AgentConfig(instruction=INSTRUCTION),
            state_db=str(tmp_path / "graph.sqlite"),
            thread_id="thread-notes",
        )

    first = AgentRunner(spec(), model=Recorder(decisions=[]))
    tracker = MlflowTracker(arm="a", log_model=False, traces=False)
    first.observers.append(tracker)
    tracker.on_start(first)
    first.step()
    first.step()
    mlflow.end_run(status="FAILED")  # the process died here
    first.close()
    done = CliRunner().invoke(app, ["note", tracker.run_id, "after the crash", "--tracking-uri", uri])
    assert done.exit_code == 0 and "mimic-learn resume" in _flat(done.output), done.output

    recorder = Recorder(decisions=[])
    again = AgentRunner(spec_from_params(mlflow.get_run(tracker.run_id).data.params, thread_id="thread-notes",
                                         state_db=str(tmp_path / "graph.sqlite"),
                                         checkpoint_dir=str(tmp_path / "ckpt")), model=recorder)  # fmt: skip
    assert again.spec.agent.instruction == INSTRUCTION
    assert again.load_resume_state() == 2
    again.observers.append(
        MlflowTracker(arm="a", log_model=False, traces=False, resume_run_id=tracker.run_id)
    )
    again.run()
    again.close()
    assert [line.split(": ", 1)[1] for line in section(recorder.prompts[0], NOTES_HEADING)] == [
        "after the crash"
    ]
    assert section(recorder.prompts[0], INSTRUCTION_HEADING) == [INSTRUCTION]
    assert len(recorder.prompts) == 1  # one decision after the resume (after epoch 3), none after the last


# ------------------------------------------------------------------------------------------------ objectives
def test_objective_macro_f1_and_class_recall_match_sklearn_on_the_validation_split():
    from sklearn.metrics import f1_score, recall_score

    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=1, monitor="recall:3", lr=3e-3))
    report = trainer.run_epoch()
    with torch.no_grad():
        trainer.model.eval()
        pred = trainer.model(trainer.data.val.x).argmax(1).numpy()
    truth = trainer.data.val.y.numpy()
    assert report.monitor == "recall_class_3" and report.mode == "max"
    assert report.metrics["recall_class_3"] == pytest.approx(
        recall_score(truth, pred, labels=[3], average=None)[0], abs=1e-6
    )
    assert trainer.evaluate("val").macro_f1 == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-6)
    f1 = Trainer.from_config(TrainConfig(task="digits", epochs=1, monitor="macro_f1", lr=3e-3)).run_epoch()
    assert f1.monitor == "macro_f1" and 0 < f1.metrics["macro_f1"] <= 1
    assert Trainer.from_config(TrainConfig(task="digits", monitor="val_loss")).run_epoch().mode == "min"


def test_objective_bad_monitor_names_the_choices_and_the_class_range():
    with pytest.raises(ValueError, match="recall_class_<k>"):
        TrainConfig(monitor="accuracy")
    with pytest.raises(ValueError, match=r"class 12 is out of range \[0, 9\]"):
        Trainer.from_config(TrainConfig(task="digits", monitor="recall_class_12"))
    result = CliRunner().invoke(app, ["run", "--monitor", "f2", "--controller", "rules", "--no-track"])
    assert result.exit_code == 2 and "monitor='f2'" in _flat(result.output)
