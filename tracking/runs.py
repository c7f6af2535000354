"""The rules for runs already in the store: which child run an id names, whether a killed run can be resumed
(``resumable``), where a note for a running run goes (``queue_note``), and what ``mimic-learn clean`` removes
(``clean_plan``). The CLI prints what these return; a refusal is a ``RunRefused`` whose message says what to do.

    client, run = find_child_run(run_id, "sqlite:///mlflow.db", "to resume", "`mimic-learn run`")
    found = resumable(run)                 # RunRefused: finished, no checkpoints, or its folder is gone
    plan = clean_plan(".mimic/graph_state.sqlite", "sqlite:///mlflow.db", remove_all=False)
    plan.execute()                         # removes the folders marked remove, tags their runs
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import tags

NOTE_LIMIT = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH: a note is one tag


class RunRefused(ValueError):
    """A run cannot be used as asked; the message says why and what to do instead."""


def find_child_run(run_id: str, tracking_uri: str, purpose: str, maker: str):
    """The MLflow child run of an agent run, given it or its parent (which must have exactly one child).
    Returns (client, run); raises ``RunRefused`` naming what to do otherwise."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise RunRefused(f"run {run_id} is not in {tracking_uri}: {exc}") from exc
    if run.data.tags.get(tags.ROLE) == tags.ROLE_PARENT:
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`{tags.PARENT_RUN_ID}` = '{run_id}'"
        )
        if len(children) != 1:
            raise RunRefused(
                f"parent run {run_id} has {len(children)} child runs; name the child run {purpose}"
            )
        run = children[0]
    found = run.data.tags
    if found.get(tags.ROLE) != tags.ROLE_CHILD or tags.THREAD_ID not in found:
        raise RunRefused(f"run {run.info.run_id} was not made by {maker}")
    return client, run


# ----------------------------------------------------------------------------------------------- notes


def check_note_text(text: str) -> None:
    """Refuse an empty note, or one longer than an MLflow tag holds."""
    if not text:
        raise RunRefused("the note is empty")
    if len(text) > NOTE_LIMIT:
        raise RunRefused(
            f"the note has {len(text)} characters; a note holds at most {NOTE_LIMIT} (an MLflow tag)"
        )


def queue_note(client, run, note: dict) -> str:
    """Put ``note`` (a ``graphs.runner.new_note`` record) on a child run as the tag mimic.note.<id>, where its next
    decision reads it; returns the run's status. Refuses a run without a controller (nobody would read the note)
    and a finished run."""
    text = note["text"]
    if run.data.params.get("controller") == "none":
        raise RunRefused(f"run {run.info.run_id} has no controller: nobody would read the note")
    if run.info.status == "FINISHED":
        raise RunRefused(f"run {run.info.run_id} already finished: no decision is left to read the note")
    client.set_tag(run.info.run_id, tags.NOTE_PREFIX + note["id"], text)
    return run.info.status


# ---------------------------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class Resumable:
    """What ``resume`` needs of a killed child run: its params (the run's config) and where its state lives."""

    run_id: str
    experiment_id: str
    parent_id: str | None
    params: dict[str, str]
    thread_id: str
    state_db: str | None
    checkpoint_dir: str
    arm: str
    log_model: bool
    traces: bool


def resumable(run) -> Resumable:
    """``run`` (a child run) as a ``Resumable``; ``RunRefused`` when it finished, wrote no trainer checkpoints,
    or logged epochs whose checkpoint folder is gone (starting over would then lie)."""
    found = run.data.tags
    if run.info.status == "FINISHED":
        raise RunRefused(finished_run_message(run))
    if tags.CHECKPOINT_DIR not in found:
        raise RunRefused(f"run {run.info.run_id} wrote no trainer checkpoints, so it cannot be resumed")
    folder = Path(found[tags.CHECKPOINT_DIR])
    if not folder.is_dir() and "val_loss" in run.data.metrics:
        how = (
            "`mimic-learn clean --all` removed it"
            if found.get(tags.CHECKPOINTS) == tags.CHECKPOINTS_CLEANED
            else "it is missing"
        )
        raise RunRefused(
            f"run {run.info.run_id} ({run.info.status}) cannot continue from its last epoch: its checkpoint "
            f"folder {folder} is gone ({how}). Start it again with `mimic-learn run` and the same options "
            "(the run's params in MLflow)."
        )
    return Resumable(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        parent_id=found.get(tags.PARENT_RUN_ID),
        params=dict(run.data.params),
        thread_id=found[tags.THREAD_ID],
        state_db=found.get(tags.STATE_DB),
        checkpoint_dir=found[tags.CHECKPOINT_DIR],
        arm=found.get(tags.ARM, "arm"),
        log_model=found.get(tags.LOG_MODEL, "True") == "True",
        traces=found.get(tags.TRACES, "True") == "True",
    )


def finished_run_message(run) -> str:
    """Why a FINISHED run cannot be resumed, and what to do instead."""
    found = run.data.tags
    folder = found.get(tags.CHECKPOINT_DIR, "its checkpoint folder")
    head = f"run {run.info.run_id} already finished, so there is nothing to resume"
    again = (
        "To train it again, start a new `mimic-learn run` with the same options (they are the run's params in "
        "MLflow)"
    )
    state = found.get(tags.CHECKPOINTS)
    if state == tags.CHECKPOINTS_REMOVED:
        return (
            f"{head}: its trainer checkpoints ({folder}) were removed when it finished. {again}; add "
            "--keep-checkpoints to keep a finished run's checkpoints."
        )
    if state == tags.CHECKPOINTS_CLEANED:
        return f"{head}: `mimic-learn clean` removed its trainer checkpoints ({folder}). {again}."
    if state == tags.CHECKPOINTS_KEPT:
        return f"{head}. Its checkpoints stay in {folder} until `mimic-learn clean` removes them."
    return f"{head}."


def tag_checkpoints(run_id: str, state: str) -> None:
    """Record on a finished run what became of its checkpoint folder (``removed`` or ``kept``): ``resume`` and
    ``clean`` read it."""
    import mlflow

    mlflow.MlflowClient().set_tag(run_id, tags.CHECKPOINTS, state)


# ----------------------------------------------------------------------------------------------- clean


@dataclass
class FolderVerdict:
    """One checkpoint folder: its size, its run (None: an orphan), whether ``clean`` removes it, and why."""

    folder: Path
    size: int
    run: object | None
    remove: bool
    why: str


@dataclass
class CleanPlan:
    """What ``mimic-learn clean`` does to each folder under ``root``; ``execute`` does it."""

    root: Path
    folders: list[FolderVerdict] = field(default_factory=list)
    client: object | None = None
    state_db: Path | None = None  # the LangGraph SQLite checkpointer whose threads the folders belong to

    @property
    def freed(self) -> int:
        return sum(f.size for f in self.folders if f.remove)

    @property
    def kept(self) -> int:
        return sum(f.size for f in self.folders if not f.remove)

    @property
    def removed(self) -> int:
        return sum(f.remove for f in self.folders)

    def execute(self) -> None:
        """Remove the folders marked ``remove`` and their threads' graph state (the checkpointer's rows: without
        the trainer's checkpoints nothing can resume them); tag each one's run (unless deleted)
        mimic.checkpoints=cleaned."""
        removed = [v for v in self.folders if v.remove]
        for verdict in removed:
            shutil.rmtree(verdict.folder)
            run = verdict.run
            if run is not None and run.info.lifecycle_stage != "deleted":
                self.client.set_tag(run.info.run_id, tags.CHECKPOINTS, tags.CHECKPOINTS_CLEANED)
        if removed and self.state_db is not None and self.state_db.is_file():
            import sqlite3
            from contextlib import closing

            from langgraph.checkpoint.sqlite import SqliteSaver

            with closing(sqlite3.connect(self.state_db, check_same_thread=False)) as conn:
                saver = SqliteSaver(conn)
                for verdict in removed:
                    saver.delete_thread(verdict.folder.name)  # the folder's name is its thread id


def clean_plan(state_db: str, tracking_uri: str, remove_all: bool = False) -> CleanPlan:
    """The verdict on every folder in ``<state_db folder>/checkpoints/``: removed when its run FINISHED, was
    deleted in MLflow or does not exist (an orphan); kept when it is RUNNING, FAILED or KILLED (resumable),
    unless ``remove_all``. ``RunRefused`` when a sqlite store is missing (every folder would look orphaned)."""
    import mlflow
    from mlflow.entities import ViewType

    root = Path(state_db).parent / "checkpoints"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        return CleanPlan(root)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise RunRefused(
            f"there is no MLflow store at {tracking_uri}: without it every folder would look like an orphan. "
            "Pass the --tracking-uri your runs logged to."
        )
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]

    def run_of(folder: Path):
        """The child run whose thread is this folder's name (the newest, if several); None: an orphan."""
        if not experiment_ids or "'" in folder.name:  # thread ids never hold a quote
            return None
        runs = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{tags.THREAD_ID}` = '{folder.name}'",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    plan = CleanPlan(root, client=client, state_db=Path(state_db))
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        run = run_of(folder)
        remove, why = clean_verdict(run, remove_all)
        plan.folders.append(FolderVerdict(folder, size, run, remove, why))
    return plan


def clean_verdict(run, remove_all: bool) -> tuple[bool, str]:
    """Whether ``clean`` removes a checkpoint folder whose run is ``run`` (None: no run), and why."""
    if run is None:
        return True, "orphan: no run of this thread in the tracking store"
    run_id, status = run.info.run_id, run.info.status
    if run.info.lifecycle_stage == "deleted":
        return True, f"deleted in MLflow (run {run_id})"
    if status == "FINISHED":
        return True, f"FINISHED, nothing to resume (run {run_id})"
    if remove_all:
        return True, f"--all: {status}, could have been resumed (run {run_id})"
    return False, f"{status}, resumable: mimic-learn resume {run_id}"
