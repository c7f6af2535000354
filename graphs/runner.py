"""The per-epoch runner: train an epoch, pause, invoke the controller graph, apply, repeat.

    runner = AgentRunner(RunSpec(train=TrainConfig(task="digits", epochs=5), controller="rules"))
    result = runner.run()

The graph is compiled once per run and invoked at every ``every``-th epoch boundary with the run as its
LangGraph ``thread_id``; a SQLite checkpointer keeps its memory across epochs and process restarts.
Observers (``on_start``/``on_epoch``/``on_end``) receive everything: the CLI prints, MLflow tracking logs.

Guard (``RunSpec.guard``, ``training/guard.py``): after an epoch whose losses are not finite or whose gradient
norm exploded, the runner rolls back (through ``TrainerControls.revert``) *before* the graph runs, so the
controller decides from sound weights. The previous decision is thereby undone (its knobs are restored with the
optimizer state). The graph's report carries the note as ``report["guard"]`` (also appended to
``report["events"]``); every prompt template shows it as a ``Guard:`` line. It is logged (``logging``), counted
(``EpochOutcome.guard_rollbacks``, the MLflow metric ``guard_rollbacks``, cumulative) and, from the next epoch
on, in the trainer's events.

Resume (``graphs/resume.py``): with ``train.checkpoint_dir`` set, each completed epoch also leaves
``resume_<epoch>.pt`` there; ``load_resume_state()`` continues from the newest. A run that ``run()``
completes (every epoch, the test evaluation, every observer's ``on_end``) then deletes the checkpoint files it
wrote there (nothing is left to resume; ``RunResult.checkpoints`` says "removed"), unless
``RunSpec.keep_checkpoint_dir``. A run that raises keeps them, so that it can be resumed.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from ..agents.providers import load_chat_model
from ..agents.reflection.base import describe_changes
from ..tools.controls import TrainerControls
from ..training import checkpoints
from ..training.guard import EpochGuard
from ..training.loop import LoopTrainer
from ..training.outcomes import OutcomeRecord
from ..training.reports import EpochReport, EvalResult
from ..training.steerable import Steerable
from ..training.trainer import Trainer
from . import resume
from .counterfactual import Counterfactual, oracle_horizon, oracle_records, plan_oracle
from .graph import build_graph
from .spec import RunSpec

HISTORY_IN_PROMPT = 10
log = logging.getLogger(__name__)


@dataclass
class EpochOutcome:
    report: EpochReport
    decision: dict | None  # what the graph's apply node committed (None: no decision this epoch)
    state: dict | None  # the graph's final state for this invocation
    guard: str | None = None  # what the guard did after this epoch (None: nothing)
    guard_rollbacks: int = 0  # guard rollbacks in this run so far, this epoch's included
    # counterfactual verdicts measured at this epoch (forks whose horizon ends here); see graphs/counterfactual.py
    counterfactual: list[dict] = field(default_factory=list)
    shadow_epochs: int = 0  # shadow (counterfactual and oracle) epochs trained in this run so far
    oracle: dict | None = None  # this boundary's oracle plan: candidates, horizon, chosen, compute


@dataclass
class RunResult:
    epochs: list[EpochOutcome]
    test: EvalResult | None  # None: a user's loop (LoopTrainer) that keeps its test split to itself
    thread_id: str
    # what ``run()`` did with the checkpoint folder once the run was complete: "removed", "kept" (asked to
    # keep it), None (the run had none)
    checkpoints: str | None = None


class ReportView(Protocol):
    """What the controller reads instead of the report the runner built (``agent_report``): a placebo arm's
    other-seed numbers (experiments/derived_arms.py). Training, the guard and tracking keep the run's own."""

    def __call__(self, report: dict) -> dict: ...


class RunObserver(Protocol):
    def on_start(self, runner: AgentRunner) -> None: ...
    def on_epoch(self, runner: AgentRunner, outcome: EpochOutcome) -> None: ...
    def on_end(self, runner: AgentRunner, result: RunResult) -> None: ...


def _largest_grad_norm(report: EpochReport) -> float | None:
    norms = [v for v in (report.grad_norms or {}).values() if math.isfinite(v)]
    return max(norms) if norms else None


def agent_report(trainer: Steerable, report: EpochReport, total_epochs: int) -> dict:
    """The report the graph sees: the epoch's numbers, the run length and a compact recent history."""
    data = report.to_dict()
    data["total_epochs"] = total_epochs
    data["history"] = [
        {
            k: getattr(r, k)
            for k in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr", "dropout")
        }
        | {"grad_norm": _largest_grad_norm(r)}  # lets `compact` state the gradient norm's trend
        | r.metrics  # a user loop's own numbers (LoopTrainer): flat, beside the standard ones
        for r in trainer.history[-HISTORY_IN_PROMPT:]
    ]
    return data


class AgentRunner:
    def __init__(
        self,
        spec: RunSpec,
        trainer: Steerable | None = None,
        observers: list | None = None,
        approver: Callable[[dict], object] | None = None,
        model=None,
        train_epoch: Callable[[], EpochReport] | None = None,
        report_view: ReportView | None = None,
    ):
        self.spec = spec
        # spec.agent.approve: each proposal that changes something is put to ``approver(proposal) -> answer``
        # (see graphs.graph.parse_review for answers); None: ask in the terminal.
        self.approver = approver
        self.report_view = report_view  # None: the controller reads the run's own report
        self.trainer = trainer or Trainer.from_config(spec.train)
        # revert_on_harm needs the pre-decision checkpoint of the previous decision's boundary
        self.trainer.pre_decision_keep = max(2, spec.every + 1)
        self.controls = TrainerControls(self.trainer, spec.bounds)
        self.thread_id = spec.thread_id or f"run-{uuid.uuid4().hex[:12]}"
        self.observers = list(observers or [])
        self.outcomes: list[EpochOutcome] = []
        self.graph = None
        self._conn = None
        self.guard = EpochGuard(spec.guard_grad_factor)
        self.fork_from: str | None = None  # resume: the graph checkpoint the next decision continues from
        # Shadow branches (counterfactual reflection, oracle) train epochs with this; a user's loop passes its own
        # (integrations.Steering's ``train_epoch``): LoopTrainer cannot train by itself.
        self.train_epoch = train_epoch
        if train_epoch is None and not isinstance(self.trainer, LoopTrainer):
            self.train_epoch = self.trainer.run_epoch
        self.outcome_records: list[OutcomeRecord] = []  # forks, oracle trials: the outcomes.jsonl artifact
        self.current_verdicts: list[dict] = []  # the verdicts of the decision being made (trace attributes)
        self.counterfactual: Counterfactual | None = None
        self.oracle_epochs = 0  # shadow epochs the oracle's rollouts trained
        needs_branches = spec.agent.reflection == "counterfactual" or _is_oracle(spec.controller)
        if needs_branches and spec.controller != "none" and self.train_epoch is None:
            raise ValueError(
                f"reflection={spec.agent.reflection!r} / controller={spec.controller!r} trains shadow branches, "
                "which needs a function that trains one epoch: pass train_epoch=... (Steering(train_epoch=...); "
                "see docs/guides/counterfactual.md)"
            )
        if spec.agent.reflection == "counterfactual" and spec.controller != "none":
            self.counterfactual = Counterfactual(
                self.controls,
                self.train_epoch,
                horizon=spec.counterfactual_horizon,
                keep_better=spec.keep_better,
                total_epochs=spec.train.epochs,
            )
        self._notes: list[dict] = []  # notes queued in this process (add_note, a reviewer's note)
        self.current_notes: list[dict] = []  # the notes of the decision being made (for observers)
        if spec.controller != "none":
            # ``model``: a chat model object used instead of loading ``spec.controller`` (which then only names it)
            self.model = model if model is not None else load_chat_model(spec.controller, spec.provider)
            Path(spec.state_db).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(spec.state_db, check_same_thread=False)
            self.checkpointer = SqliteSaver(self._conn)
            self.graph = build_graph(
                self.controls,
                self.model,
                spec.agent,
                spec.provider,
                self.checkpointer,
                on_observe=self._on_observe,
                on_decision=self._on_decision,
            )

    def _on_observe(self, epoch: int) -> None:
        for obs in self.observers:
            hook = getattr(obs, "on_decision_start", None)
            if hook is not None:
                hook(self, epoch)

    def _on_decision(self, decision: dict) -> None:
        for obs in self.observers:
            hook = getattr(obs, "on_decision_end", None)
            if hook is not None:
                hook(self, decision)

    @property
    def controller_model(self) -> str | None:
        """Which model file and adapter a local GGUF controller resolved to (``local`` alone names neither);
        None for any other controller."""
        describe = getattr(getattr(self, "model", None), "describe", None)
        return describe() if callable(describe) else None

    @property
    def graph_config(self) -> dict:
        return {
            "configurable": {"thread_id": self.thread_id},
            "recursion_limit": 4 * self.spec.agent.budget + 20,
        }

    def graph_state(self) -> dict:
        """The graph's persisted state for this run (memory, previous decision, last decision)."""
        if self.graph is None:
            return {}
        return dict(self.graph.get_state(self.graph_config).values)

    def invoke_graph(self, payload: dict) -> dict:
        """One decision. The checkpointer saves once, when the decision is complete (durability="exit"):
        per-step writes cost ~50 ms a decision and a half-made decision is not worth resuming."""
        config = self.graph_config
        if self.fork_from is not None:  # resume: continue from the state the trainer checkpoint matches
            config = {**config, "configurable": {**config["configurable"], "checkpoint_id": self.fork_from}}
            self.fork_from = None
        state = self.graph.invoke(payload, config, durability="exit")
        while state.get("__interrupt__"):  # a human review (spec.agent.approve): ask, then resume the graph
            if self.approver is None:
                from ..agents.approval import TerminalApprover

                self.approver = TerminalApprover()
            answer = self.approver(state["__interrupt__"][0].value)
            state = self.graph.invoke(Command(resume=answer), self.graph_config, durability="exit")
        return state

    # ------------------------------------------------------------------ notes
    def add_note(self, text: str, source: str = "python") -> dict:
        """Queue a note for the next decision (seen once). Other processes queue theirs through the MLflow
        run (``mimic-learn note``; ``MlflowTracker.poll_notes``)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"note={text!r}: a note is non-empty text")
        if self.graph is None:
            raise ValueError("this run has no controller (controller='none'): nobody would read the note")
        note = new_note(text.strip(), source)
        self._notes.append(note)
        return note

    def pending_notes(self) -> list[dict]:
        """The notes the next decision sees: queued here or by observers (the MLflow run's note tags), minus
        those an earlier decision of this run already saw (its decisions record them, also after a resume)."""
        seen = {n["id"] for o in self.outcomes if o.decision for n in o.decision.get("notes") or []}
        found = list(self._notes)
        for obs in self.observers:
            poll = getattr(obs, "poll_notes", None)
            if poll is not None:
                try:
                    found += poll(self)
                except Exception as exc:  # the channel failing must not stop training; say so
                    log.warning("could not read notes from %s: %s", type(obs).__name__, exc)
        unique = {n["id"]: n for n in found if n["id"] not in seen}
        return sorted(unique.values(), key=lambda n: (n.get("time") or 0, n["id"]))

    def step(self) -> EpochOutcome:
        """Train one epoch; guard against a diverged epoch; at a decision boundary (not after the last
        epoch) invoke the graph."""
        return self.after_epoch(self.trainer.run_epoch())

    def after_epoch(self, report: EpochReport) -> EpochOutcome:
        """Everything after an epoch was trained: guard, decision (at a boundary), observers, resume state.
        ``step()`` calls it after ``trainer.run_epoch()``; a user's own loop calls it (through
        ``mimic_learn.integrations.Steering``) after ``LoopTrainer.end_epoch()``."""
        verdicts = self._resolve_forks(report)
        switched = any(v["kept"] == "without" for v in verdicts)  # keep_better: already on a sound state
        guard = (
            self.guard_epoch(report)
            if (self.graph is not None and self.spec.guard and not switched)
            else None
        )
        decision, state, oracle = None, None, None
        total = self.spec.train.epochs
        if self.graph is not None and report.epoch % self.spec.every == 0 and report.epoch < total:
            seen = agent_report(self.trainer, report, total)
            if self.report_view is not None:
                seen = self.report_view(seen)
            if guard:
                seen["guard"] = guard
                seen["events"] = [*seen.get("events", []), guard]
            if verdicts:
                seen["counterfactual"] = [{k: v[k] for k in VERDICT_KEYS} for v in verdicts]
            # the pre-decision state a fork's shadow branch starts from (the guard and keep_better keep it current)
            start = self.trainer.pre_decision.get(report.epoch) if self.counterfactual is not None else None
            if self.counterfactual is not None and start is None:
                start = self.trainer.checkpoint()
            plan = self._plan_oracle(report.epoch) if _is_oracle(self.spec.controller) else None
            self.current_verdicts = verdicts
            notes = self.current_notes = self.pending_notes()
            state = self.invoke_graph({"epoch": report.epoch, "report": seen, "notes": notes})
            self.current_verdicts = []
            decision = state.get("decision")
            delivered = {n["id"] for n in notes}
            self._notes = [n for n in self._notes if n["id"] not in delivered]
            for review in state.get("reviews") or []:  # --approve: the reviewer's note is for the next one
                if review.get("note"):
                    self.add_note(review["note"], source="reviewer")
            rendered = _prompt_text(state)
            config = self.trainer.config.as_params()
            if plan is not None:
                oracle = {
                    "horizon": plan.horizon,
                    "candidates": [c.name for c in plan.candidates],
                    "chosen": plan.candidates[plan.best].name,
                    "compute_epochs": plan.compute_epochs,
                }
                self.outcome_records += oracle_records(plan, seen, rendered, config, self.thread_id)
            if self.counterfactual is not None and decision is not None:
                self.counterfactual.open(report.epoch, decision, seen, rendered, start)
        outcome = EpochOutcome(
            report, decision, state, guard, self.guard_rollbacks, verdicts, self.shadow_epochs, oracle
        )
        self.outcomes.append(outcome)
        for obs in self.observers:
            obs.on_epoch(self, outcome)
        self.save_resume_state()
        return outcome

    # ------------------------------------------------------------------ counterfactual branches
    @property
    def shadow_epochs(self) -> int:
        """Epochs trained in shadow branches so far (forks and oracle rollouts): the extra compute."""
        return self.oracle_epochs + (self.counterfactual.shadow_epochs if self.counterfactual else 0)

    def _resolve_forks(self, report: EpochReport) -> list[dict]:
        """The verdicts of forks whose horizon ends at this epoch; each is also written into its decision
        (``decision["counterfactual"]``, the decisions table's ``decision_effect``) and recorded."""
        if self.counterfactual is None:
            return []
        out = []
        config = self.trainer.config.as_params()
        for verdict, record in self.counterfactual.resolve(report, config, self.thread_id):
            self.outcome_records.append(record)
            for past in self.outcomes:
                if past.report.epoch == verdict["decision_epoch"] and past.decision is not None:
                    past.decision["counterfactual"] = {k: verdict[k] for k in VERDICT_KEYS}
            out.append(verdict)
        return out

    def _plan_oracle(self, epoch: int):
        """Roll every candidate out in shadow and hand the winner to the oracle chat model for this epoch."""
        model = self.model
        horizon = oracle_horizon(getattr(model, "horizon", None), self.trainer, epoch, self.spec.train.epochs)
        plan = plan_oracle(self.controls, self.spec.agent.tools, horizon, self.train_epoch)
        self.oracle_epochs += plan.compute_epochs
        if hasattr(model, "plans"):
            model.plans[epoch] = plan.candidates[plan.best].tool_calls
            model.chosen[epoch] = plan.candidates[plan.best].name
        return plan

    # ------------------------------------------------------------------ guard
    @property
    def guard_rollbacks(self) -> int:
        return self.guard.rollbacks

    @guard_rollbacks.setter
    def guard_rollbacks(self, value: int) -> None:
        self.guard.rollbacks = value

    def guard_epoch(self, report: EpochReport) -> str | None:
        """Roll back an epoch that diverged (non-finite loss) or whose gradients exploded; return the note
        the graph sees, or None when the epoch was sound."""
        trip = self.guard.inspect(self.trainer, report)
        if trip is None:
            return None
        last = self.graph_state().get("last_decision") if self.graph is not None else None
        blamed = (
            f"the decision after epoch {last['epoch']} ({describe_changes(last['changes'])}) is marked harmful"
            if last
            else "no decision to blame"
        )
        return self.guard.roll_back(trip, self.controls, blamed)

    # ------------------------------------------------------------------ resume (graphs/resume.py)
    def save_resume_state(self) -> Path | None:
        """After a completed epoch (trained, decided, observed): what ``load_resume_state`` continues from."""
        folder = self.spec.train.resolved_checkpoint_dir()
        if folder is None:
            return None
        for obs in self.observers:  # what they logged up to here must be durable before this file exists
            hook = getattr(obs, "on_checkpoint", None)
            if hook is not None:
                hook(self)
        graph_id = None
        if self.graph is not None:
            graph_id = self.graph.get_state(self.graph_config).config["configurable"].get("checkpoint_id")
        run_state = {
            "graph_checkpoint_id": graph_id,
            "guard_rollbacks": self.guard_rollbacks,
            "outcome_records": [r.to_json() for r in self.outcome_records],
            "shadow_epochs": {
                "oracle": self.oracle_epochs,
                "forks": self.counterfactual.shadow_epochs if self.counterfactual else 0,
            },
            "outcomes": json.dumps([resume.outcome_row(o) for o in self.outcomes], default=str),
        }
        return resume.save(folder, self.trainer, run_state)

    def load_resume_state(self) -> int:
        """Continue from the newest ``resume_<epoch>.pt``; returns the epoch it resumes after (0: none)."""
        state = resume.load(self.spec.train.resolved_checkpoint_dir(), self.trainer)
        if state is None:
            if self.graph is not None and self.graph_state():
                self.checkpointer.delete_thread(self.thread_id)  # a decision made before any epoch was saved
            return 0
        self.guard_rollbacks = state["guard_rollbacks"]
        self.outcome_records = [OutcomeRecord.from_json(r) for r in state.get("outcome_records", [])]
        shadow = state.get("shadow_epochs") or {}
        self.oracle_epochs = shadow.get("oracle", 0)
        if self.counterfactual is not None:
            self.counterfactual.shadow_epochs = shadow.get("forks", 0)
        self.outcomes = [
            EpochOutcome(
                EpochReport(**o["report"]),
                o["decision"],
                resume.restored_state(o),
                o["guard"],
                o["guard_rollbacks"],
            )
            for o in json.loads(state["outcomes"])
        ]
        if self.graph is not None:
            saved = state["graph_checkpoint_id"]
            latest = self.graph.get_state(self.graph_config).config["configurable"].get("checkpoint_id")
            if saved is None and latest is not None:
                self.checkpointer.delete_thread(self.thread_id)
            elif latest != saved:  # the graph saved a later decision than the trainer: continue from ours
                self.fork_from = saved
        return state["epoch"]

    def run(self) -> RunResult:
        for obs in self.observers:
            obs.on_start(self)
        while self.trainer.epoch < self.spec.train.epochs:
            self.step()
        result = RunResult(self.outcomes, self.trainer.test(), self.thread_id)
        for obs in self.observers:
            obs.on_end(self, result)
        # Only now, with everything logged: a failure above leaves the checkpoints for `resume`.
        if self.spec.train.resolved_checkpoint_dir() is not None:
            if not self.spec.keep_checkpoint_dir:
                self.remove_checkpoints()
            result.checkpoints = "kept" if self.spec.keep_checkpoint_dir else "removed"
        return result

    def remove_checkpoints(self) -> None:
        """Delete the checkpoint files this run wrote (``epoch_*.pt``, ``resume_*.pt``, half-written ``*.tmp``)
        and then the folder if nothing else is in it; a user's own files there are never touched."""
        ckpt_dir = self.spec.train.resolved_checkpoint_dir()
        if ckpt_dir is None or not ckpt_dir.is_dir():
            return
        for pattern in checkpoints.RUN_FILES:
            for path in ckpt_dir.glob(pattern):
                path.unlink(missing_ok=True)
        try:
            ckpt_dir.rmdir()
        except OSError:  # not empty: someone else's files
            log.info("kept %s: it holds files this run did not write", ckpt_dir)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


VERDICT_KEYS = ("decision_epoch", "epoch", "horizon", "monitor", "effect", "val_loss_effect", "kept", "text")


def _is_oracle(controller: str) -> bool:
    return controller == "oracle" or controller.startswith("oracle:")


def _prompt_text(state: dict) -> str:
    """The report as the controller read it: the decision's human message."""
    from langchain_core.messages import HumanMessage

    for m in state.get("messages") or []:
        if isinstance(m, HumanMessage):
            return str(m.content)
    return ""


def new_note(text: str, source: str, when: float | None = None) -> dict:
    """A note record: ``id`` (``<unix ms>-<random>``, also its MLflow tag suffix), ``text``, ``time``, ``source``."""
    when = time.time() if when is None else when
    return {"id": f"{int(when * 1000)}-{uuid.uuid4().hex[:6]}", "text": text, "time": when, "source": source}
