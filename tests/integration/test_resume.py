"""Process faults: a run killed mid-way continues from its last completed epoch, exactly.

In process: a runner stopped after k epochs and a fresh runner that ``load_resume_state()``s end where an
uninterrupted run ends (metrics, weights, graph memory), also when the graph had saved one decision more than
the trainer. End to end (slow): ``kill -9`` of a real ``mimic-learn run`` after at least one logged epoch, then
``mimic-learn resume <run-id>`` finishes the same MLflow child run, every epoch's metrics logged exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from langgraph.checkpoint.sqlite import SqliteSaver

from mimic_learn.agents.providers import ProviderOptions
from mimic_learn.graphs.graph import AgentConfig
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.graphs.spec import spec_from_params
from mimic_learn.tools.controls import Bounds
from mimic_learn.training import TrainConfig

pytestmark = pytest.mark.faults

SCRIPT = {
    "decisions": [
        {"epoch": 1, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.002, "reason": "faster"}}]},
        {
            "epoch": 2,
            "tool_calls": [{"name": "set_dropout", "args": {"dropout": 0.3, "reason": "regularise"}}],
        },
        {"epoch": 3, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.001, "reason": "slower"}}]},
        {
            "epoch": 4,
            "tool_calls": [{"name": "set_weight_decay", "args": {"weight_decay": 0.0001, "reason": "l2"}}],
        },
    ]
}
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "dropout", "weight_decay", "alpha")


def _spec(tmp_path: Path, name: str, epochs: int = 5) -> RunSpec:
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump(SCRIPT))
    return RunSpec(
        train=TrainConfig(
            task="digits", epochs=epochs, lr=3e-3, checkpoint_dir=str(tmp_path / name / "ckpt")
        ),
        controller=f"scripted:{script}",
        agent=AgentConfig(reflection="memory"),
        state_db=str(tmp_path / name / "graph.sqlite"),
        thread_id=f"thread-{name}",
    )


def _finish(runner: AgentRunner):
    try:
        return (
            runner.run(),
            runner.graph_state(),
            {k: v.clone() for k, v in runner.trainer.model.state_dict().items()},
        )
    finally:
        runner.close()


def _assert_same_run(resumed, reference) -> None:
    (result, state, weights), (ref_result, ref_state, ref_weights) = resumed, reference
    assert [o.report.epoch for o in result.epochs] == [o.report.epoch for o in ref_result.epochs]
    for got, want in zip(result.epochs, ref_result.epochs, strict=True):
        assert {k: getattr(got.report, k) for k in COMPARED} == {k: getattr(want.report, k) for k in COMPARED}
        assert (got.decision or {}).get("changes") == (want.decision or {}).get("changes")
    assert (result.test.loss, result.test.acc) == (ref_result.test.loss, ref_result.test.acc)
    for name, tensor in weights.items():
        assert torch.equal(tensor, ref_weights[name]), name
    assert state["memory"] == ref_state["memory"] and len(state["memory"]) == 3


def test_resume_after_a_stop_ends_where_an_uninterrupted_run_ends(tmp_path):
    reference = _finish(AgentRunner(_spec(tmp_path, "ref")))
    first = AgentRunner(_spec(tmp_path, "cut"))
    first.step()
    first.step()
    first.close()  # "killed" after epoch 2 was complete
    again = AgentRunner(_spec(tmp_path, "cut"))
    assert again.load_resume_state() == 2 and again.trainer.epoch == 2
    assert [o.report.epoch for o in again.outcomes] == [1, 2]
    assert again.fork_from is None  # trainer and graph agree
    _assert_same_run(_finish(again), reference)


def test_resume_when_the_graph_saved_a_decision_the_trainer_did_not(tmp_path):
    reference = _finish(AgentRunner(_spec(tmp_path, "ref")))
    first = AgentRunner(_spec(tmp_path, "cut"))
    for _ in range(3):
        first.step()
    first.close()
    ckpt_dir = Path(first.spec.train.checkpoint_dir)
    (ckpt_dir / "resume_0003.pt").unlink()  # killed between the graph's save and the trainer's
    again = AgentRunner(_spec(tmp_path, "cut"))
    assert again.graph_state()["last_decision"]["epoch"] == 3
    assert again.load_resume_state() == 2 and again.fork_from is not None
    resumed = _finish(again)
    _assert_same_run(resumed, reference)
    assert [m["epoch"] for m in resumed[1]["memory"]] == [1, 2, 3]  # decision 3 is not remembered twice


def test_spec_round_trips_through_mlflow_params(tmp_path):
    spec = RunSpec(
        train=TrainConfig(task="digits", regime=600, epochs=7, lr=0.02, optimizer="sgd", schedule="step",
                          dropout=0.1, num_threads=1, checkpoint_dir="x/ckpt", extra={"note": "n"}),
        controller="rules",
        agent=AgentConfig(prompt="losses", reflection="revert_on_harm", budget=3, decision_timeout_s=9.5,
                          tools=["set_lr", "keep_current"], max_tokens_per_run=1000),
        provider=ProviderOptions(fallback=None, retries=4, timeout_s=12.0, model_path="m.gguf"),
        bounds=Bounds(lr=(1e-5, 0.5), clamp=True),
        every=2,
        state_db="s/g.sqlite",
        guard=False,
        guard_grad_factor=50.0,
    )  # fmt: skip
    params = spec.as_params()
    assert all(isinstance(v, str) for v in params.values())
    rebuilt = spec_from_params(params, thread_id="t")
    spec.thread_id = "t"
    assert rebuilt == spec


# ---------------------------------------------------------------------------------------------- end to end
def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("mimic-learn")), *args]


def _run_command(tmp_path: Path, uri: str, experiment: str) -> list[str]:
    return _cli(
        "run", "--task", "digits", "--epochs", "6", "--controller", f"scripted:{tmp_path / 'script.yaml'}",
        "--reflection", "memory", "--tracking-uri", uri, "--experiment", experiment,
        "--state-db", str(tmp_path / experiment / "graph.sqlite"), "--no-log-model", "--threads", "1",
        "--batch-size", "1",  # ~1 s an epoch: time to kill it mid-epoch
    )  # fmt: skip


def _epochs_logged(db: Path, experiment: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(
                "select max(m.step) from metrics m join runs r on m.run_uuid = r.run_uuid "
                "join experiments e on r.experiment_id = e.experiment_id where m.key = 'val_loss' and e.name = ?",
                (experiment,),
            ).fetchone()
        return row[0] or 0
    except sqlite3.Error:  # the store is being created
        return 0


def _child(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs(
        [exp.experiment_id], filter_string="tags.`mimic.role` = 'child'", output_format="list"
    )
    assert len(runs) == 1
    return runs[0]


def _memory(state_db: str, thread_id: str) -> list:
    with sqlite3.connect(state_db) as conn:
        saved = SqliteSaver(conn).get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    return saved.checkpoint["channel_values"]["memory"]


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "script.yaml").write_text(yaml.safe_dump(SCRIPT))
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "ref.log").open("w")
    reference = subprocess.Popen(
        _run_command(tmp_path, uri, "ref"), cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    # the reference run creates the store first; the killed run starts once it exists
    deadline = time.time() + 120
    while not db.exists() and time.time() < deadline:
        time.sleep(0.2)
    victim = subprocess.Popen(
        _run_command(tmp_path, uri, "cut"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while _epochs_logged(db, "cut") < 1 and victim.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert victim.poll() is None, "the run finished before it could be killed"
        killed_after = _epochs_logged(db, "cut")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert 1 <= killed_after < 6
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    mlflow.set_tracking_uri(uri)
    try:
        cut = _child("cut")
        assert cut.info.status == "RUNNING"  # killed: nobody ended it
        resumed = subprocess.run(
            _cli("resume", cut.info.run_id, "--tracking-uri", uri), cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"resuming run {cut.info.run_id} after epoch" in resumed.stdout

        client = mlflow.MlflowClient()
        cut, ref = client.get_run(cut.info.run_id), _child("ref")
        assert cut.info.status == "FINISHED"
        assert client.get_run(cut.data.tags["mlflow.parentRunId"]).info.status == "FINISHED"
        for key in ref.data.metrics:
            got = client.get_metric_history(cut.info.run_id, key)
            want = client.get_metric_history(ref.info.run_id, key)
            assert sorted(m.step for m in got) == sorted({m.step for m in got}), f"{key} logged twice"
            assert [m.step for m in got] == [m.step for m in want], key
            if key not in ("epoch_seconds", "decision_latency_s"):
                assert [m.value for m in got] == [m.value for m in want], key
        assert cut.data.metrics["test_acc"] == ref.data.metrics["test_acc"]
        assert [m.step for m in client.get_metric_history(cut.info.run_id, "val_loss")] == [1, 2, 3, 4, 5, 6]
        # graph memory came back from the checkpointer (same thread) and ends as the uninterrupted run's
        thread = cut.data.tags["mimic.thread_id"]
        assert _memory(cut.data.tags["mimic.state_db"], thread) == _memory(
            ref.data.tags["mimic.state_db"], ref.data.tags["mimic.thread_id"]
        )
        assert Path(cut.data.tags["mimic.checkpoint_dir"]).name == thread
        rows = {
            r: client.download_artifacts(r, "decisions.json", str(tmp_path / r))
            for r in (cut.info.run_id, ref.info.run_id)
        }
        tables = {r: yaml.safe_load(Path(p).read_text()) for r, p in rows.items()}
        assert tables[cut.info.run_id]["data"] and [row[:1] for row in tables[cut.info.run_id]["data"]] == [
            row[:1] for row in tables[ref.info.run_id]["data"]
        ]
    finally:
        mlflow.set_tracking_uri(None)
