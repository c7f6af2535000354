"""Commands on runs already in the MLflow store: ``note`` (a message a running run's next decision reads),
``resume`` (continue a killed run) and ``clean`` (remove checkpoint folders nothing can resume). The rules are
``tracking.runs``'; these parse and print."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from .options import TrackingOpt
from .output import ConsoleObserver, console, fail, format_size
from .train import load_tools_modules, record_checkpoints


def note(
    run_id: Annotated[
        str,
        typer.Argument(help="The MLflow run of a running `mimic-learn run` or `Steering` (child or parent)."),
    ],
    text: Annotated[str, typer.Argument(help="The note, e.g. 'class 7 recall is what the client checks'.")],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Give a running run a note from another terminal: its next decision sees it once, in the trusted part of
    the prompt, and the decisions table records it with its time. The channel is the MLflow run (a tag
    mimic.note.<time>); a finished run is refused."""
    import time

    from ..graphs.runner import new_note
    from ..tracking.runs import RunRefused, check_note_text, find_child_run, queue_note

    text = text.strip()
    try:
        check_note_text(text)
        client, run = find_child_run(
            run_id, tracking_uri, "to send the note to", "`mimic-learn run` or `Steering`"
        )
        record = new_note(text, "mimic-learn note", time.time())
        status = queue_note(client, run, record)
    except RunRefused as exc:
        fail(str(exc))
    when = "its next decision sees it once" if status == "RUNNING" else (
        f"the run is {status}: `mimic-learn resume {run.info.run_id}` continues it, and its next decision sees it"
    )  # fmt: skip
    console.print(f"note {record['id']} queued on run {run.info.run_id}; {when}", highlight=False)


def resume(
    run_id: Annotated[
        str,
        typer.Argument(help="The MLflow run of a killed `mimic-learn run` (its child run, or its parent)."),
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    tools_module: Annotated[
        list[str] | None,
        typer.Option(help="Import extra tools from this .py file or module, as the run did (repeatable)."),
    ] = None,
) -> None:
    """Continue a killed `mimic-learn run` from its last completed epoch, in the same MLflow run: the config comes
    from the run's params, the trainer from its checkpoints, the graph's memory from its SQLite checkpointer."""
    from contextlib import nullcontext

    import mlflow

    from .. import tracking
    from ..experiments import resume_view
    from ..graphs.runner import AgentRunner
    from ..graphs.spec import spec_from_params
    from ..tracking.runs import RunRefused, find_child_run, resumable

    load_tools_modules(tools_module)
    try:
        child = find_child_run(run_id, tracking_uri, "to resume", "`mimic-learn run`")[1]
        found = resumable(child)
        view = resume_view(child.data.tags)  # a placebo cell goes on reading its source run's numbers
    except (RunRefused, ValueError) as exc:
        fail(str(exc))
    spec = spec_from_params(
        found.params, thread_id=found.thread_id, state_db=found.state_db, checkpoint_dir=found.checkpoint_dir
    )
    observer = ConsoleObserver(spec.train.epochs)
    try:
        runner = AgentRunner(spec, observers=[observer], report_view=view)
    except Exception as exc:
        fail(f"could not rebuild the run: {exc}")
    try:
        done = runner.load_resume_state()
        observer.progress.update(observer.task, completed=done)
        console.print(
            f"resuming run {found.run_id} after epoch {done} of {spec.train.epochs} "
            f"(thread {spec.thread_id}, checkpoints in {spec.train.checkpoint_dir})"
        )
        mlflow.set_experiment(experiment_id=found.experiment_id)
        with tracking.parent_run(run_id=found.parent_id) if found.parent_id else nullcontext():
            tracker = tracking.MlflowTracker(
                arm=found.arm, log_model=found.log_model, traces=found.traces, resume_run_id=found.run_id
            )
            runner.observers.append(tracker)
            result = runner.run()
    finally:
        runner.close()
    record_checkpoints(spec, result, found.run_id)
    console.print(f"MLflow: run {found.run_id} finished in {tracking_uri}")


def clean(
    state_db: Annotated[
        str,
        typer.Option(
            help="The --state-db the runs used: their checkpoint folders are <its folder>/checkpoints/<thread>/."
        ),
    ] = ".mimic/graph_state.sqlite",
    tracking_uri: Annotated[
        str,
        typer.Option(
            help="MLflow tracking URI the runs logged to; a folder whose run is not in it counts as an orphan."
        ),
    ] = "sqlite:///mlflow.db",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List each folder and what would happen to it; remove nothing.")
    ] = False,
    remove_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also remove the checkpoints of RUNNING, FAILED and KILLED runs: they can then no longer be "
            "resumed (a run still training recreates its folder at its next epoch).",
        ),
    ] = False,
) -> None:
    """Remove trainer checkpoint folders that nothing can resume, and print the space freed.

    `mimic-learn run` checkpoints into <state-db folder>/checkpoints/<thread>/ so that `resume` can continue it.

    A run that finishes removes its own folder (unless --keep-checkpoints); this command removes the rest.

    Removed: folders of FINISHED runs, of runs deleted in MLflow, and orphans (no run of that thread in the store).

    Kept: folders of RUNNING, FAILED and KILLED runs, which `resume` continues from (--all removes them too).

    Each folder is listed with its size and the reason; a removed one tags its run mimic.checkpoints=cleaned, and
    its thread's graph state (the LangGraph checkpoints in --state-db) is deleted too."""
    from ..tracking.runs import RunRefused, clean_plan

    try:
        plan = clean_plan(state_db, tracking_uri, remove_all)
    except RunRefused as exc:
        fail(str(exc))
    if not plan.folders:
        console.print(f"no checkpoint folders in {plan.root}", highlight=False)
        return
    console.print(
        f"checkpoint folders in {plan.root} (runs in {tracking_uri})"
        + (": [bold]dry run, nothing is removed[/]" if dry_run else ""),
        highlight=False,
    )
    if not dry_run:
        plan.execute()
    # Narrow terminals wrap only the last column: folder names and actions stay whole.
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("folder", no_wrap=True, min_width=max(len(f.folder.name) for f in plan.folders))
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("why", overflow="fold")
    for f in plan.folders:
        action = ("would remove" if dry_run else "[red]removed[/]") if f.remove else "[green]kept[/]"
        table.add_row(f.folder.name, format_size(f.size), action, f.why)
    console.print(table, highlight=False)
    total = len(plan.folders)
    counts = f"{plan.removed} of {total} folders; {format_size(plan.kept)} kept in {total - plan.removed}"
    if dry_run:
        console.print(
            f"[bold]would free {format_size(plan.freed)}[/] ({counts}); nothing removed (--dry-run)"
        )
    else:
        console.print(f"[bold]freed {format_size(plan.freed)}[/] ({counts})")
