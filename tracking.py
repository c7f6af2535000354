"""MLflow tracking: params, per-epoch metrics, LangGraph traces, decisions table, plots, the final model.

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

from .tools.controls import KNOBS
from .training.knobs import report_knobs
from .training.trainer import metric_value

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# One trace-export worker: with several, a trace's span batch and its trace info are written by two threads at
# once, and on a sqlite store the span write could replace the previews we set (measured: about one run in four
# showed one decision's raw state as its Input/Output preview). Set before MLflow creates its export queue;
# a user's own setting wins.
os.environ.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS", "1")
OUTCOMES_ARTIFACT = "outcomes.jsonl"  # a child run's outcome records (training/outcomes.py)
# `mimic-learn note <run-id> "text"` sets the tag mimic.note.<unix ms>-<random> = text on the run; the running
# process reads the run's tags before each decision (MlflowTracker.poll_notes). See
# docs/guides/instructions-and-notes.md.
NOTE_TAG_PREFIX = "mimic.note."
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
    import langgraph
    import torch

    from . import __version__

    tags = {
        "mimic_learn.version": __version__,
        "torch.version": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
    }
    try:
        from importlib.metadata import version

        tags["langgraph.version"] = version("langgraph")
        tags["mlflow.version"] = version("mlflow")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        tags["langgraph.version"] = getattr(langgraph, "__version__", "unknown")
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
            tags["code.version"] = sha
    except Exception:
        pass
    return tags


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
            mlflow.set_tags(version_tags() | {"mimic.role": "parent"})
        if params:
            mlflow.log_params(params)
        yield run
    except BaseException as exc:
        end_runs_down_to(run.info.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    end_runs_down_to(run.info.run_id, "FINISHED")


def epoch_metrics(outcome) -> dict[str, float]:
    r = outcome.report
    metrics = {
        k: getattr(r, k)
        for k in ("train_loss", "train_acc", "val_loss", "val_acc")
        if getattr(r, k) is not None  # a user loop (LoopTrainer) reports the numbers it has
    }
    metrics.update(r.metrics)
    metrics |= {k: v for k, v in report_knobs(r).items() if v is not None}  # every knob of the table
    metrics["epoch_seconds"] = r.wall_time
    metrics["guard_rollbacks"] = getattr(outcome, "guard_rollbacks", 0)
    metrics.update({f"grad_norm/{k}": v for k, v in r.grad_norms.items()})
    metrics.update({f"val_acc_class/{c}": v for c, v in enumerate(r.per_class_val_acc)})
    state = outcome.state
    if state is not None:
        metrics.update(
            {
                "tool_calls": state.get("tool_calls_used", 0),
                "invalid_calls": state.get("invalid_calls", 0),
                "refused_calls": state.get("refused_calls", 0),
                "fallbacks": len(state.get("fallbacks") or []),
                "decision_latency_s": state.get("decide_seconds", 0.0),
                "tokens_in": state.get("tokens_in", 0),
                "tokens_out": state.get("tokens_out", 0),
                "reverted": float(bool(state.get("reverted"))),
            }
        )
        reviews = state.get("reviews") or []
        if reviews:  # --approve: what the human did with this decision's proposals
            for action in ("accept", "edit", "reject"):
                metrics[f"review_{action}s"] = sum(rv["action"] == action for rv in reviews)
    # Counterfactual forks measured at this epoch (graphs/counterfactual.py): the decision's effect vs not acting
    verdicts = getattr(outcome, "counterfactual", None) or []
    effects = [v["effect"] for v in verdicts if v.get("effect") is not None]
    if effects:
        metrics["decision_effect"] = effects[-1]
    if verdicts or getattr(outcome, "shadow_epochs", 0):
        metrics["shadow_epochs"] = outcome.shadow_epochs  # cumulative extra epochs (forks + oracle rollouts)
    oracle = getattr(outcome, "oracle", None)
    if oracle:
        metrics["oracle_candidates"] = len(oracle["candidates"])
        metrics["oracle_horizon"] = oracle["horizon"]
        metrics["oracle_compute_epochs"] = oracle["compute_epochs"]  # candidates x horizon, this decision
    # MLflow stores floats; a NaN loss is kept as NaN (that is the information)
    return {k: float(v) for k, v in metrics.items()}


def decision_rows(outcome) -> list[dict]:
    """One row per tool call (or one row for a decision with none), for the decisions table."""
    d, r = outcome.decision, outcome.report
    if d is None:
        return []
    base = {
        "epoch": r.epoch,
        "reflection": d.get("reflection", ""),
        "val_acc_before": r.val_acc,
        "val_loss_before": r.val_loss,
        "monitor": r.monitor,
        "monitor_before": metric_value(r.to_dict(), r.monitor),
        "changes": json.dumps(d.get("changes", [])),
        "fallbacks": "; ".join(d.get("fallbacks", [])),
        "reverted": bool(d.get("reverted")),
        # counterfactual reflection: the measured effect vs not acting (None: no fork, or not measured yet)
        "decision_effect": (d.get("counterfactual") or {}).get("effect"),
        "final_text": d.get("final_text", ""),
        # the whole decision's provider usage (every model turn of it), repeated on each of its rows
        "tokens_in": int((outcome.state or {}).get("tokens_in", 0)),
        "tokens_out": int((outcome.state or {}).get("tokens_out", 0)),
        "notes": json.dumps(
            [
                {"time": _iso(n.get("time")), "text": n.get("text"), "source": n.get("source")}
                for n in d.get("notes") or []
            ]
        )
        if d.get("notes")
        else "",
        "review": json.dumps(
            [{k: v for k, v in rv.items() if k != "message_id"} for rv in d.get("reviews") or []], default=str
        )
        if d.get("reviews")
        else "",
    }
    calls = d.get("calls") or [
        {"tool": "", "args": {}, "accepted": False, "reply": "no tool call", "turn": 0}
    ]
    return [
        base
        | {
            "turn": c.get("turn", 0),
            "tool": c.get("tool") or "",
            "arguments": json.dumps(c.get("args"), default=str),
            "accepted": bool(c.get("accepted")),
            "reason": (c.get("args") or {}).get("reason", "") if isinstance(c.get("args"), dict) else "",
            "reply": c.get("reply", ""),
        }
        for c in calls
    ]


PREVIEW_REFLECTION_CHARS = 160


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def report_preview(report: dict, history: list[dict]) -> str:
    """One line for a decision trace's Input column: ``epoch 53 · val acc 0.970 (best 0.972) · lr 0.01 ·
    dropout 0.2``. ``history`` is the run's epoch reports up to this one (the best is over them)."""
    monitor = report.get("monitor") or "val_acc"
    value = metric_value(report, monitor)
    seen = [v for v in (metric_value(r, monitor) for r in history) if v is not None]
    best = (min if report.get("mode") == "min" else max)(seen) if seen else None
    shown = "n/a" if value is None else f"{value:.3f}"
    parts = [f"epoch {report['epoch']}", f"{monitor.replace('_', ' ')} {shown}"]
    if best is not None:
        parts[-1] += f" (best {best:.3f})"
    parts.append(f"lr {_num(report.get('lr'))}")
    if report.get("dropout") is not None:
        parts.append(f"dropout {_num(report['dropout'], 2)}")
    if report.get("weight_decay"):
        parts.append(f"wd {_num(report['weight_decay'], 2)}")
    if report.get("alpha"):
        parts.append(f"alpha {_num(report['alpha'], 2)}")
    return " · ".join(parts)


def decision_preview(decision: dict, before: dict[str, float | None]) -> str:
    """One line for a decision trace's Output column: ``set_lr 0.01→0.002 ✓ · set_dropout ✗ · 7 refused ·
    reflection: …``. ``before`` holds the knob values when the decision started."""
    parts = []
    for change in decision.get("changes") or []:
        key, tool = change["key"], change.get("tool") or change["key"]
        if key in KNOBS:
            parts.append(f"{tool} {_num(before.get(key))}→{change['value']} ✓")
        else:
            parts.append(f"{tool} {change['value']} ✓" if key != "rollback" else f"{tool} ✓")
    calls = decision.get("calls") or []
    refused = sum(not c["accepted"] and str(c.get("reply", "")).startswith("refused") for c in calls)
    rejected: dict[str, int] = {}
    for c in calls:
        if not c["accepted"] and not str(c.get("reply", "")).startswith("refused"):
            rejected[str(c["tool"])] = rejected.get(str(c["tool"]), 0) + 1
    parts += [f"{tool} ✗" + (f"×{n}" if n > 1 else "") for tool, n in rejected.items()]
    if refused:
        parts.append(f"{refused} refused")
    if not decision.get("changes"):
        parts.insert(0, "no change")
    if decision.get("reverted"):
        parts.append("reverted the previous decision")
    if decision.get("fallbacks"):
        parts.append(f"{len(decision['fallbacks'])} fallback(s)")
    if decision.get("commit_error"):
        parts.append(f"commit failed: {decision['commit_error'][:80]}")
    reflection = " ".join(str(decision.get("reflection") or "").split())
    if reflection:
        cut = reflection[:PREVIEW_REFLECTION_CHARS]
        parts.append("reflection: " + cut + ("…" if len(reflection) > len(cut) else ""))
    return " · ".join(parts)


def run_params(runner) -> dict[str, str]:
    """The run's MLflow params. A user's loop (``LoopTrainer``, no data of ours) gets what its own objects
    say — optimizer class and initial lr, model class, monitored metric — instead of our TrainConfig's
    defaults, which it does not use."""
    params = runner.spec.as_params()
    trainer = runner.trainer
    if trainer.data is not None:
        return params
    from dataclasses import fields

    from .training.config import TrainConfig

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
        tags = {
            "mimic.role": "child",
            "mimic.arm": self.arm,
            "mimic.thread_id": runner.thread_id,
            "mimic.data": runner.trainer.data.source if runner.trainer.data is not None else "user loop",
            "mimic.log_model": str(self.log_model),
            "mimic.traces": str(self.traces),
        }
        if runner.graph is not None:
            tags["mimic.state_db"] = str(Path(runner.spec.state_db).resolve())
        ckpt_dir = runner.spec.train.resolved_checkpoint_dir()
        if ckpt_dir is not None:
            tags["mimic.checkpoint_dir"] = str(ckpt_dir.resolve())
        mlflow.set_tags(version_tags() | tags | self.tags)

    def on_decision_start(self, runner, epoch: int) -> None:
        """Called inside the graph invocation: tag, name and preview the trace being recorded, and put it in
        the run's session (all in memory: no flush, no extra write)."""
        if not self.traces:
            return
        controls = getattr(runner, "controls", None)
        self._before = {k: controls.current(k) for k in KNOBS} if controls is not None else {}
        history = [r.to_dict() for r in runner.trainer.history]
        report = next((r for r in reversed(history) if r["epoch"] == epoch), None)
        tags = {"epoch": str(epoch), "mimic.arm": self.arm, "mlflow.traceName": f"epoch {epoch} decision"}
        verdicts = getattr(runner, "current_verdicts", None) or []
        if verdicts:  # the previous decision's measured effect (counterfactual reflection)
            tags["mimic.decision_effect"] = str(verdicts[-1]["effect"])
            try:  # the graph's `observe` span; a tracing hiccup must not stop the run
                span = mlflow.get_current_active_span()
                if span is not None:
                    span.set_attributes(
                        {
                            "mimic.decision_effect": verdicts[-1]["effect"],
                            "mimic.decision_effect_epoch": verdicts[-1]["decision_epoch"],
                            "mimic.counterfactual_horizon": verdicts[-1]["horizon"],
                        }
                    )
            except Exception as exc:  # pragma: no cover - depends on the tracing backend
                mlflow.set_tag("mimic.trace_attribute_error", f"{type(exc).__name__}: {exc}"[:300])
        if runner.spec.agent.instruction:
            tags["mimic.instruction"] = runner.spec.agent.instruction[:TRACE_TAG_LIMIT]
        notes = getattr(runner, "current_notes", None)
        if notes:
            tags["mimic.notes"] = json.dumps([n["text"] for n in notes])[:TRACE_TAG_LIMIT]
        mlflow.update_current_trace(
            tags=tags,
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
                mlflow.set_tag("mimic.price", usage["price"])
        if self.rows:
            mlflow.log_table(_columns(self.rows), artifact_file="decisions.json")
        records = getattr(runner, "outcome_records", None) or []
        if records:
            from .training.outcomes import write_jsonl

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


def run_usage(outcomes, controller: str, provider=None) -> dict:
    """A run's total provider tokens over its decisions and, where a price is known (``--price-in/--price-out``
    or ``pricing.PRICE_TABLE``), the estimated cost in USD: ``total_tokens_in``, ``total_tokens_out``,
    ``decisions``, and ``estimated_cost_usd`` with ``price`` (where the price came from)."""
    from .pricing import price_for

    states = [o.state for o in outcomes if o.state is not None]
    usage: dict = {
        "decisions": len(states),
        "total_tokens_in": sum(int(s.get("tokens_in", 0)) for s in states),
        "total_tokens_out": sum(int(s.get("tokens_out", 0)) for s in states),
    }
    price = price_for(
        controller,
        getattr(provider, "price_in_per_m", None),
        getattr(provider, "price_out_per_m", None),
    )
    if price is not None:
        usage["estimated_cost_usd"] = price.cost_usd(usage["total_tokens_in"], usage["total_tokens_out"])
        usage["price"] = price.describe()
    return usage


def describe_usage(usage: dict) -> str:
    text = (
        f"tokens: {usage['total_tokens_in']:,} in / {usage['total_tokens_out']:,} out "
        f"over {usage['decisions']} decisions"
    )
    if "estimated_cost_usd" in usage:
        text += f"; estimated cost ${usage['estimated_cost_usd']:.4f} at {usage['price']}"
    return text


def notes_from_tags(tags: dict[str, str]) -> list[dict]:
    """The note records held in a run's ``mimic.note.<unix ms>-<random>`` tags."""
    notes = []
    for key, text in tags.items():
        if key.startswith(NOTE_TAG_PREFIX):
            note_id = key.removeprefix(NOTE_TAG_PREFIX)
            ms = note_id.split("-")[0]
            when = int(ms) / 1000 if ms.isdigit() else None
            notes.append({"id": note_id, "text": text, "time": when, "source": "mimic-learn note"})
    return notes


def _iso(when) -> str:
    import datetime as dt

    if not isinstance(when, (int, float)):
        return ""
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds")


def log_plots(arms: dict[str, list[dict]]) -> None:
    """Plot the arms' epoch reports (overlaid) and log the PNGs to the active run under ``plots/``."""
    from .plots import plot_run

    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_run(arms, Path(tmp)):
            mlflow.log_artifact(str(path), artifact_path="plots")


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(rows[0])
    return {k: [row.get(k) for row in rows] for k in keys}


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
    from .training.outcomes import read_jsonl

    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id)}
    if OUTCOMES_ARTIFACT not in names:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        records = read_jsonl(client.download_artifacts(run_id, OUTCOMES_ARTIFACT, tmp))
    for record in records:
        record.source_run_id = run_id
    return records


def decisions_to_script(rows: list[dict]) -> dict:
    """A logged run's decisions as a ``scripted:`` file: every tool call, turn by turn, rejected ones too."""
    by_epoch: dict[int, dict[int, list]] = {}
    for row in rows:
        if not row.get("tool"):
            continue
        args = json.loads(row["arguments"]) if row.get("arguments") else {}
        by_epoch.setdefault(int(row["epoch"]), {}).setdefault(int(row.get("turn") or 0), []).append(
            {"name": row["tool"], "args": args}
        )
    return {
        "decisions": [
            {"epoch": epoch, "turns": [turns[t] for t in sorted(turns)]}
            for epoch, turns in sorted(by_epoch.items())
        ]
    }
