"""Checkpoint folders do not pile up: a run that finishes removes its own (unless --keep-checkpoints), a run that
fails keeps it for `resume`, the MLflow tag `mimic.checkpoints` says which, and `mimic-learn clean` removes the
folders nothing can resume (finished runs, orphans) while keeping the resumable ones.

Tiny digits runs (2 epochs, rules controller) through the real CLI, in process (typer's CliRunner), against one
SQLite MLflow store per module; each test has its own --state-db folder.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.cli.output import format_size as _size
from mimic_learn.graphs.runner import AgentRunner, RunSpec
from mimic_learn.training import TrainConfig
from mimic_learn.training.trainer import Trainer

cli = CliRunner()
EPOCHS = 2


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_leftover_mlflow_state():
    """Each CLI command runs in a fresh process for a user; in process, a failed command leaves its parent
    run active and the tracking URI set, which the next command must not inherit."""
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _state_db(state_dir: Path) -> str:
    return str(state_dir / ".mimic" / "graph_state.sqlite")


def _checkpoints(state_dir: Path) -> Path:
    return state_dir / ".mimic" / "checkpoints"


def _run(state_dir: Path, store: str, *extra: str):
    return cli.invoke(
        app,
        ["run", "--task", "digits", "--epochs", str(EPOCHS), "--controller", "rules", "--threads", "1",
         "--no-log-model", "--no-traces", "--tracking-uri", store, "--experiment", "checkpoints",
         "--state-db", _state_db(state_dir), *extra],
    )  # fmt: skip


def _crash_before_epoch(monkeypatch, epoch: int) -> None:
    """Make training raise when it starts ``epoch`` (the epochs before it are complete and checkpointed)."""
    original = Trainer.run_epoch

    def run_epoch(self, *args, **kwargs):
        if self.epoch + 1 >= epoch:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def _child(state_dir: Path, store: str, status: str | None = None):
    """The child run that a `mimic-learn run` with this state folder logged (the one with ``status``)."""
    mlflow.set_tracking_uri(store)
    query = f"tags.`mimic.state_db` = '{Path(_state_db(state_dir)).resolve()}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=query, output_format="list")
    assert len(runs) == 1, runs
    return runs[0]


def _flat(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines at the terminal width


def _finished(state_dir: Path, store: str):
    result = _run(state_dir, store)
    assert result.exit_code == 0, result.output
    return result, _child(state_dir, store)


def test_a_finished_run_removes_its_checkpoint_folder_and_tags_the_run(tmp_path, store):
    result, run = _finished(tmp_path, store)
    folder = Path(run.data.tags["mimic.checkpoint_dir"])
    assert folder.parent == _checkpoints(tmp_path).resolve()
    assert not folder.exists()
    assert list(_checkpoints(tmp_path).iterdir()) == []
    assert run.info.status == "FINISHED"
    assert run.data.tags["mimic.checkpoints"] == "removed"
    assert "checkpoints: removed" in _flat(result.output)


def test_keep_checkpoints_keeps_the_folder_of_a_finished_run(tmp_path, store):
    result = _run(tmp_path, store, "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    run = _child(tmp_path, store)
    folder = Path(run.data.tags["mimic.checkpoint_dir"])
    assert sorted(p.name for p in folder.glob("resume_*.pt")) == ["resume_0001.pt", "resume_0002.pt"]
    assert run.data.tags["mimic.checkpoints"] == "kept"
    assert run.data.params["keep_checkpoint_dir"] == "True"


def test_a_failed_run_keeps_its_folder_and_resume_finishes_it(tmp_path, store, monkeypatch):
    _crash_before_epoch(monkeypatch, 2)
    crashed = _run(tmp_path, store)
    assert isinstance(crashed.exception, RuntimeError), crashed.output
    run = _child(tmp_path, store)
    assert run.info.status == "FAILED"
    assert "mimic.checkpoints" not in run.data.tags
    folder = Path(run.data.tags["mimic.checkpoint_dir"])
    assert (folder / "resume_0001.pt").is_file()

    monkeypatch.undo()
    mlflow.end_run()  # a new process for a user (see _no_leftover_mlflow_state)
    resumed = cli.invoke(app, ["resume", run.info.run_id, "--tracking-uri", store])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming run {run.info.run_id} after epoch 1 of {EPOCHS}" in _flat(resumed.output)
    run = mlflow.MlflowClient().get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(1, EPOCHS + 1))
    assert not folder.exists() and run.data.tags["mimic.checkpoints"] == "removed"


def test_a_crash_ends_the_parent_run_failed_too_and_resume_finishes_both(tmp_path, store, monkeypatch):
    _crash_before_epoch(monkeypatch, 2)
    assert isinstance(_run(tmp_path, store).exception, RuntimeError)
    assert mlflow.active_run() is None  # nothing left open in this process
    child = _child(tmp_path, store)
    parent = mlflow.MlflowClient().get_run(child.data.tags["mlflow.parentRunId"])
    assert (child.info.status, parent.info.status) == ("FAILED", "FAILED")
    monkeypatch.undo()
    resumed = cli.invoke(app, ["resume", child.info.run_id, "--tracking-uri", store])
    assert resumed.exit_code == 0, resumed.output
    client = mlflow.MlflowClient()
    assert client.get_run(child.info.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_resume_of_a_finished_run_says_its_checkpoints_were_removed_and_what_to_do(tmp_path, store):
    _, run = _finished(tmp_path, store)
    result = cli.invoke(app, ["resume", run.info.run_id, "--tracking-uri", store])
    assert result.exit_code == 2, result.output
    said = _flat(result.output)
    assert f"run {run.info.run_id} already finished, so there is nothing to resume" in said
    assert "were removed when it finished" in said
    assert "start a new `mimic-learn run`" in said and "--keep-checkpoints" in said


def _three_folders(state_dir: Path, store: str, monkeypatch) -> dict[str, str]:
    """A finished run's kept folder, a failed run's folder and an orphan: {folder name: what it is}."""
    result = _run(state_dir, store, "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    finished = Path(_child(state_dir, store).data.tags["mimic.checkpoint_dir"]).name
    _crash_before_epoch(monkeypatch, 2)
    assert isinstance(_run(state_dir, store).exception, RuntimeError)
    monkeypatch.undo()
    mlflow.end_run()
    failed = Path(_child(state_dir, store, "FAILED").data.tags["mimic.checkpoint_dir"])
    orphan = _checkpoints(state_dir) / "run-0123456789ab"
    orphan.mkdir()
    (orphan / "epoch_0001.pt").write_bytes(b"x" * 5000)
    return {finished: "finished", failed.name: "failed", orphan.name: "orphan"}


def _listed(output: str) -> dict[str, str]:
    """The clean table's rows: {folder name: the row's first line} (only the last column wraps)."""
    return {line.split()[0]: line for line in output.splitlines() if line.strip().startswith("run-")}


def test_clean_dry_run_lists_every_folder_and_removes_nothing(tmp_path, store, monkeypatch):
    folders = _three_folders(tmp_path, store, monkeypatch)
    result = cli.invoke(
        app, ["clean", "--dry-run", "--state-db", _state_db(tmp_path), "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in _checkpoints(tmp_path).iterdir()) == sorted(folders)
    rows = _listed(result.output)
    assert set(rows) == set(folders), result.output
    for name, kind in folders.items():
        assert ("kept" if kind == "failed" else "would remove") in rows[name], rows[name]
    assert "FINISHED" in rows[_name(folders, "finished")] and "FAILED" in rows[_name(folders, "failed")]
    assert "orphan" in rows[_name(folders, "orphan")] and "4.9 KiB" in rows[_name(folders, "orphan")]
    assert "would free" in result.output and "(2 of 3 folders" in result.output
    assert "nothing removed" in result.output


def test_clean_removes_finished_and_orphan_folders_and_keeps_a_failed_runs(tmp_path, store, monkeypatch):
    folders = _three_folders(tmp_path, store, monkeypatch)
    failed = _name(folders, "failed")
    removable = sum(
        f.stat().st_size
        for name in folders
        if name != failed
        for f in (_checkpoints(tmp_path) / name).rglob("*")
    )
    threads_before = _graph_threads(tmp_path)
    assert failed in threads_before and _name(folders, "finished") in threads_before
    result = cli.invoke(app, ["clean", "--state-db", _state_db(tmp_path), "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    assert [p.name for p in _checkpoints(tmp_path).iterdir()] == [failed]
    # the removed folders' graph state went with them; the resumable run's stays for `resume`
    assert _graph_threads(tmp_path) == threads_before - {_name(folders, "finished"), _name(folders, "orphan")}
    rows = _listed(result.output)
    assert "removed" in rows[_name(folders, "finished")] and "removed" in rows[_name(folders, "orphan")]
    assert "kept" in rows[failed] and "resumable" in rows[failed]
    assert f"freed {_size(removable)} (2 of 3 folders" in _flat(result.output)
    finished_run = _child(tmp_path, store, "FINISHED")
    assert finished_run.data.tags["mimic.checkpoints"] == "cleaned"
    said = _flat(cli.invoke(app, ["resume", finished_run.info.run_id, "--tracking-uri", store]).output)
    assert "`mimic-learn clean` removed its trainer checkpoints" in said

    # --all removes the resumable one too; resume then says why it cannot continue
    result = cli.invoke(app, ["clean", "--all", "--state-db", _state_db(tmp_path), "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    assert list(_checkpoints(tmp_path).iterdir()) == []
    failed_run = _child(tmp_path, store, "FAILED")
    result = cli.invoke(app, ["resume", failed_run.info.run_id, "--tracking-uri", store])
    assert result.exit_code == 2
    assert "`mimic-learn clean --all` removed it" in _flat(result.output)


def _graph_threads(state_dir: Path) -> set[str]:
    """The thread ids with LangGraph checkpoints in the run's --state-db."""
    with closing(sqlite3.connect(_state_db(state_dir))) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


def _name(folders: dict[str, str], kind: str) -> str:
    return next(name for name, k in folders.items() if k == kind)


def test_clean_refuses_a_tracking_store_that_does_not_exist(tmp_path):
    (_checkpoints(tmp_path) / "run-0123456789ab").mkdir(parents=True)
    missing = f"sqlite:///{tmp_path / 'nowhere.db'}"
    result = cli.invoke(app, ["clean", "--state-db", _state_db(tmp_path), "--tracking-uri", missing])
    assert result.exit_code == 2
    assert "--tracking-uri" in result.output
    assert (_checkpoints(tmp_path) / "run-0123456789ab").is_dir() and not (tmp_path / "nowhere.db").exists()


def test_clean_help_explains_what_it_removes():
    out = _flat(cli.invoke(app, ["clean", "--help"]).output)
    for words in ("--dry-run", "--all", "--state-db", "--tracking-uri", "FINISHED", "orphans"):
        assert words in out


def test_the_python_runner_removes_only_the_files_it_wrote(tmp_path):
    def spec(checkpoint_dir: Path | None, **kwargs) -> RunSpec:
        folder = str(checkpoint_dir) if checkpoint_dir is not None else None
        return RunSpec(
            TrainConfig(task="digits", epochs=1, checkpoint_dir=folder), controller="none", **kwargs
        )

    assert AgentRunner(spec(tmp_path / "kept", keep_checkpoint_dir=True)).run().checkpoints == "kept"
    assert any((tmp_path / "kept").glob("resume_*.pt")) and any((tmp_path / "kept").glob("epoch_*.pt"))
    assert AgentRunner(spec(tmp_path / "gone")).run().checkpoints == "removed"
    assert not (tmp_path / "gone").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert AgentRunner(spec(mine)).run().checkpoints == "removed"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert AgentRunner(spec(None)).run().checkpoints is None


def test_an_untracked_run_writes_no_checkpoints(tmp_path):
    """`resume` finds a run's checkpoints through its MLflow run: a --no-track run could never be resumed."""
    result = cli.invoke(
        app,
        ["run", "--epochs", "1", "--controller", "rules", "--threads", "1", "--no-track", "--state-db",
         _state_db(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not _checkpoints(tmp_path).exists()
