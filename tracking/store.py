"""The MLflow store: the experiment, parent runs, and ``MlflowTracker``, the observer that logs a child run's
params, per-epoch metrics, LangGraph traces, decisions table, plots and final model; reading a logged run back.

Structure: one parent run per command (``run``, ``reproduce``), one nested child run per arm x seed.
Traces come from ``mlflow.langchain.autolog()`` (no ``@mlflow.trace`` on top: that would duplicate spans);
each graph invocation is one trace, linked to the child run and tagged with its epoch. Its name
(``epoch 53 decision``) and its list previews are set while it is recorded, so the Traces list reads like a log
(``report_preview`` / ``decision_preview``); the full graph state stays in the spans' inputs and outputs. A run's
traces share one MLflow session (its LangGraph thread id), so the Sessions view groups them.
Secrets: only the run's config is logged; API keys live in the environment and are never read here.
Resume (``MlflowTracker(resume_run_id=...)``): the child run is reopened; epochs already in it are not logged
again, and the decisions table is rebuilt from the runner's restored outcomes.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.pytorch

from ..tools.controls import KNOBS
from . import tags
from .previews import decision_preview, report_preview
from .records import as_columns, decision_rows, epoch_metrics, notes_from_tags, run_usage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# One trace-export worker: with several, a trace's span batch and its trace info are written by two threads at
# once, and on a sqlite store the span write could replace the previews we set (measured: about one run in four
# showed one decision's raw state as its Input/Output preview). Set before MLflow creates its export queue;
# a user's own setting wins.
os.environ.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS", "1")
OUTCOMES_ARTIFACT = "outcomes.jsonl"  # a child run's outcome records (training/outcomes.py)
TRACE_TAG_LIMIT = 4000  # mlflow.tracing.constant.MAX_CHARS_IN_TRACE_INFO_TAGS_VALUE is 4096


def setup(tracking_uri: str | None, experiment: str) -> None:
    """Point MLflow at the store and the experiment, creating it if needed.

    Several runs may start at once against one server: when two create the same experiment, one gets
    RESOURCE_ALREADY_EXISTS; we look it up again instead of letting the run fall into the Default experiment."""
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri or DEFAULT_TRACKING_URI)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            experiment_id = client.create_experiment(experiment)
        except MlflowException:  # created by a concurrent run in the meantime
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)


def version_tags() -> dict[str, str]:
    """The versions a run was made with (package, torch, device, python, langgraph, mlflow, git commit)."""
    import langgraph
    import torch

    from .. import __version__

    found = {
        tags.VERSION: __version__,
        tags.TORCH_VERSION: torch.__version__,
        tags.DEVICE: "cuda" if torch.cuda.is_available() else "cpu",
        tags.PYTHON: platform.python_version(),
    }
    try:
        from importlib.metadata import version

        found[tags.LANGGRAPH_VERSION] = version("langgraph")
        found[tags.MLFLOW_VERSION] = version("mlflow")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        found[tags.LANGGRAPH_VERSION] = getattr(langgraph, "__version__", "unknown")
    try:
        import subprocess

        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        if sha:
            found[tags.CODE_VERSION] = sha
    except Exception:
        pass
    return found


def end_runs_down_to(run_id: str, status: str) -> None:
    """End every active run above ``run_id`` (a child an exception left open), then ``run_id`` itself, with
    ``status``. ``mlflow.start_run``'s context manager ends only the innermost active run, so without this an
    exception inside a child leaves the parent RUNNING for ever."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status=status)
        if active.info.run_id == run_id:
            return


@contextmanager
def parent_run(
    name: str | None = None, params: dict | None = None, run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """A parent run that ends FINISHED, or FAILED (KILLED on Ctrl-C) together with any child left open.
    ``run_id``: reopen an existing parent (``resume``) instead of starting one."""
    run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
    try:
        if not run_id:
            mlflow.set_tags(version_tags() | {tags.ROLE: tags.ROLE_PARENT})
        if params:
            mlflow.log_params(params)
        yield run
    except BaseException as exc:
        end_runs_down_to(run.info.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    end_runs_down_to(run.info.run_id, "FINISHED")


def run_params(runner) -> dict[str, str]:
    """The run's MLflow params. A user's loop (``LoopTrainer``, no data of ours) gets what its own objects
    say — optimizer class and initial lr, model class, monitored metric — instead of our TrainConfig's
    defaults, which it does not use."""
    params = runner.spec.as_params()
    if runner.controller_model:  # a local GGUF controller: which file and adapter "local" resolved to
        params["controller_model"] = runner.controller_model
    trainer = runner.trainer
    if trainer.data is not None:
        return params
    from dataclasses import fields

    from ..training.config import TrainConfig

    unused = {f.name for f in fields(TrainConfig)} - {"task", "epochs", "checkpoint_dir", "keep_checkpoints"}
    params = {k: v for k, v in params.items() if k not in unused and not k.startswith("extra.")}
    params.update(
        optimizer=type(trainer.optimizer).__name__,
        lr=str(trainer.lr),
        weight_decay=str(trainer.weight_decay),
        dropout=str(trainer.dropout),
        scheduler=type(trainer.scheduler).__name__ if trainer.scheduler is not None else "none",
        model=type(trainer.model).__name__,
        monitor=trainer.monitor,
        mode=trainer.mode,
    )
    return params


class MlflowTracker:
    """A ``RunObserver`` that logs one child run (arm x seed) under the active parent run."""

    def __init__(
        self,
        arm: str = "arm",
        log_model: bool = True,
        traces: bool = True,
        nested: bool = True,
        tags: dict | None = None,
        resume_run_id: str | None = None,
    ):
        self.arm = arm
        self.resume_run_id = resume_run_id  # reopen this child run and log only the epochs it lacks
        self.logged_upto = 0  # epochs up to this one are already in the run
        self.tags = dict(tags or {})  # extra tags for the child run (e.g. which experiment cell it is)
        self.log_model = log_model
        self.traces = traces
        self.nested = nested
        self.rows: list[dict] = []
        self.run_id: str | None = None
        self._before: dict[str, float | None] = {}  # knob values when the current decision started

    def on_start(self, runner) -> None:
        if self.traces and runner.graph is not None:
            mlflow.langchain.autolog(silent=True)
        nested = self.nested and mlflow.active_run() is not None
        if self.resume_run_id is not None:
            run = mlflow.start_run(run_id=self.resume_run_id, nested=nested)
            self.run_id = run.info.run_id
            history = mlflow.MlflowClient().get_metric_history(self.run_id, "val_loss")
            self.logged_upto = max((m.step for m in history), default=0)
            self.rows = [row for o in runner.outcomes for row in decision_rows(o)]
            return
        run = mlflow.start_run(run_name=self.arm, nested=nested)
        self.run_id = run.info.run_id
        mlflow.log_params(run_params(runner))
        run_tags = {
            tags.ROLE: tags.ROLE_CHILD,
            tags.ARM: self.arm,
            tags.THREAD_ID: runner.thread_id,
            tags.DATA: runner.trainer.data.source if runner.trainer.data is not None else "user loop",
            tags.LOG_MODEL: str(self.log_model),
            tags.TRACES: str(self.traces),
        }
        if runner.graph is not None:
            run_tags[tags.STATE_DB] = str(Path(runner.spec.state_db).resolve())
        ckpt_dir = runner.spec.train.resolved_checkpoint_dir()
        if ckpt_dir is not None:
            run_tags[tags.CHECKPOINT_DIR] = str(ckpt_dir.resolve())
        mlflow.set_tags(version_tags() | run_tags | self.tags)

    def on_decision_start(self, runner, epoch: int) -> None:
        """Called inside the graph invocation: tag, name and preview the trace being recorded, and put it in
        the run's session (all in memory: no flush, no extra write)."""
        if not self.traces:
            return
        controls = getattr(runner, "controls", None)
        self._before = {k: controls.current(k) for k in KNOBS} if controls is not None else {}
        history = [r.to_dict() for r in runner.trainer.history]
        report = next((r for r in reversed(history) if r["epoch"] == epoch), None)
        trace_tags = {tags.EPOCH: str(epoch), tags.ARM: self.arm, tags.TRACE_NAME: f"epoch {epoch} decision"}
        verdicts = getattr(runner, "current_verdicts", None) or []
        if verdicts:  # the previous decision's measured effect (counterfactual reflection)
            trace_tags[tags.DECISION_EFFECT] = str(verdicts[-1]["effect"])
            try:  # the graph's `observe` span; a tracing hiccup must not stop the run
                span = mlflow.get_current_active_span()
                if span is not None:
                    span.set_attributes(
                        {
                            tags.DECISION_EFFECT: verdicts[-1]["effect"],
                            tags.DECISION_EFFECT_EPOCH: verdicts[-1]["decision_epoch"],
                            tags.COUNTERFACTUAL_HORIZON: verdicts[-1]["horizon"],
                        }
                    )
            except Exception as exc:  # pragma: no cover - depends on the tracing backend
                mlflow.set_tag(tags.TRACE_ATTRIBUTE_ERROR, f"{type(exc).__name__}: {exc}"[:300])
        if runner.spec.agent.instruction:
            trace_tags[tags.INSTRUCTION] = runner.spec.agent.instruction[:TRACE_TAG_LIMIT]
        notes = getattr(runner, "current_notes", None)
        if notes:
            trace_tags[tags.NOTES] = json.dumps([n["text"] for n in notes])[:TRACE_TAG_LIMIT]
        mlflow.update_current_trace(
            tags=trace_tags,
            session_id=runner.thread_id,
            request_preview=report_preview(report, history) if report is not None else f"epoch {epoch}",
        )

    def on_decision_end(self, runner, decision: dict) -> None:
        """Called at the end of the graph's ``apply`` node, still inside the trace: the Output preview."""
        if self.traces:
            mlflow.update_current_trace(response_preview=decision_preview(decision, self._before))

    def poll_notes(self, runner) -> list[dict]:
        """Notes queued on this run by ``mimic-learn note`` (its ``mimic.note.*`` tags), for the next decision."""
        if self.run_id is None:
            return []
        return notes_from_tags(mlflow.MlflowClient().get_run(self.run_id).data.tags)

    def on_epoch(self, runner, outcome) -> None:
        epoch = outcome.report.epoch
        if epoch > self.logged_upto:  # a resumed run redoes at most the epoch it was killed after
            mlflow.log_metrics(epoch_metrics(outcome), step=epoch, synchronous=False)  # end_run waits for it
        self.rows.extend(decision_rows(outcome))

    def on_checkpoint(self, runner) -> None:
        """Before the runner writes a resume checkpoint: the epochs it covers must be in the store, or a resumed
        run (which logs only epochs after the last one stored) would miss them."""
        mlflow.flush_async_logging()

    def on_end(self, runner, result) -> None:

        if result.test is not None:
            mlflow.log_metrics({"test_acc": result.test.acc, "test_loss": result.test.loss})
        # Rebuilt from the outcomes: a counterfactual verdict arrives after its decision's row was made.
        self.rows = [row for o in result.epochs for row in decision_rows(o)] or self.rows
        if runner.graph is not None:
            usage = run_usage(result.epochs, runner.spec.controller, runner.spec.provider)
            mlflow.log_metrics({k: v for k, v in usage.items() if isinstance(v, int | float)})
            if "price" in usage:
                mlflow.set_tag(tags.PRICE, usage["price"])
        if self.rows:
            mlflow.log_table(as_columns(self.rows), artifact_file="decisions.json")
        records = getattr(runner, "outcome_records", None) or []
        if records:
            from ..training.outcomes import write_jsonl

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / OUTCOMES_ARTIFACT
                write_jsonl(records, path)
                mlflow.log_artifact(str(path))
        reports = [o.report.to_dict() for o in result.epochs]
        log_plots({self.arm: reports})
        with tempfile.TemporaryDirectory() as tmp:
            history = Path(tmp) / "history.json"
            history.write_text(json.dumps(reports, indent=1))
            mlflow.log_artifact(str(history))
        if self.log_model:
            trainer = runner.trainer
            was_training = trainer.model.training
            model = trainer.model.eval()
            example = trainer.data.val.x[:2].cpu().numpy() if trainer.data is not None else None
            mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=["torch"])
            model.train(was_training)  # a user's loop may go on training it
        if self.traces and runner.graph is not None:
            mlflow.flush_trace_async_logging()  # every trace of this run is in the store before the run ends
            mlflow.langchain.autolog(disable=True)
        mlflow.end_run()


def log_plots(arms: dict[str, list[dict]]) -> None:
    """Plot the arms' epoch reports (overlaid) and log the PNGs to the active run under ``plots/``."""
    from .plots import plot_run

    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_run(arms, Path(tmp)):
            mlflow.log_artifact(str(path), artifact_path="plots")


def load_decisions(run_id: str) -> list[dict]:
    """The decisions table of a logged run, as rows."""
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "decisions.json", tmp)
        data = json.loads(Path(path).read_text())
    columns, values = data["columns"], data["data"]
    return [dict(zip(columns, row, strict=True)) for row in values]


def load_outcomes(run_id: str) -> list:
    """A logged run's outcome records (``OutcomeRecord``), each with ``source_run_id`` set; [] when it has none."""
    from ..training.outcomes import read_jsonl

    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id)}
    if OUTCOMES_ARTIFACT not in names:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        records = read_jsonl(client.download_artifacts(run_id, OUTCOMES_ARTIFACT, tmp))
    for record in records:
        record.source_run_id = run_id
    return records
