"""The per-epoch runner: train an epoch, pause, invoke the controller graph, apply, repeat.

    runner = AgentRunner(RunSpec(train=TrainConfig(task="digits", epochs=5), controller="rules"))
    result = runner.run()

The graph is compiled once per run and invoked at every ``every``-th epoch boundary with the run as its
LangGraph ``thread_id``; a SQLite checkpointer keeps its memory across epochs and process restarts.
Observers (``on_start``/``on_epoch``/``on_end``) receive everything: the CLI prints, MLflow tracking logs.

Guard (``RunSpec.guard``): after an epoch whose train or validation loss is not finite, or whose gradient norm
grew more than ``guard_grad_factor`` times over the previous epoch's, the runner restores the last good state
(``trainer.last_good``; for an explosion with finite losses, the boundary before that epoch) *before* the graph
runs, so the controller decides from sound weights. The previous decision is thereby undone (its knobs are
restored with the optimizer state). The graph's report carries the note as ``report["guard"]`` (also appended
to ``report["events"]``); it is logged (``logging``), counted (``EpochOutcome.guard_rollbacks``, the MLflow
metric ``guard_rollbacks``, cumulative) and, from the next epoch on, in the trainer's events. The prompt
templates do not render it (yet): an LLM sees the non-finite epoch in its history table.

Resume: with ``train.checkpoint_dir`` set, each completed epoch (trained, decided, observed) also leaves
``resume_<epoch>.pt`` there: the trainer after the decision, its retention checkpoints, the outcomes so far and
the graph checkpoint id. ``load_resume_state()`` continues from the newest; if the graph had already saved a
later decision (a kill between the two writes), the next invocation forks from the recorded checkpoint.
A run that ``run()`` completes (every epoch, the test evaluation, every observer's ``on_end``) then deletes the
checkpoint files it wrote there (nothing is left to resume; ``RunResult.checkpoints`` says "removed"), unless
``RunSpec.keep_checkpoint_dir``. A run that raises keeps them, so that it can be resumed.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from ..agents.providers import ProviderOptions, load_chat_model
from ..agents.reflection.base import describe_changes
from ..tools.controls import Bounds, TrainerControls
from ..training.config import TrainConfig, parse_regime
from ..training.trainer import EpochReport, EvalResult, Trainer, metric_value
from .graph import AgentConfig, build_graph

HISTORY_IN_PROMPT = 10
RESUME_KEEP = 2  # resume_<epoch>.pt files kept in the checkpoint folder
log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    train: TrainConfig = field(default_factory=TrainConfig)
    controller: str = "rules"  # "none": no agent (a baseline arm)
    agent: AgentConfig = field(default_factory=AgentConfig)
    provider: ProviderOptions = field(default_factory=ProviderOptions)
    bounds: Bounds = field(default_factory=Bounds)
    every: int = 1  # invoke the graph every k epochs
    state_db: str = ".mimic/graph_state.sqlite"
    thread_id: str | None = None  # None: a new id per run
    guard: bool = True  # roll back a non-finite or exploded epoch before the graph runs (agent runs only)
    guard_grad_factor: float = 1e3  # "exploded": total grad norm > this x the previous epoch's
    keep_checkpoint_dir: bool = False  # True: a finished run leaves its train.checkpoint_dir files in place

    def as_params(self) -> dict[str, str]:
        """Everything ``spec_from_params`` needs to rebuild this spec (``mimic-learn resume``)."""
        params = self.train.as_params()
        params.update(
            controller=self.controller,
            reflection=self.agent.reflection,
            prompt=self.agent.prompt,
            every=str(self.every),
            budget=str(self.agent.budget),
            decision_timeout_s=str(self.agent.decision_timeout_s),
            fallback=str(self.provider.fallback),
            retries=str(self.provider.retries),
            state_db=self.state_db,
            guard=str(self.guard),
            guard_grad_factor=str(self.guard_grad_factor),
            keep_checkpoint_dir=str(self.keep_checkpoint_dir),
            bounds=json.dumps(asdict(self.bounds)),
        )
        params.update({f"agent.{k}": json.dumps(v) for k, v in _agent_extras(self.agent).items()})
        params.update({f"provider.{k}": json.dumps(v) for k, v in _provider_extras(self.provider).items()})
        return params


_AGENT_IN_PARAMS = ("prompt", "reflection", "budget", "decision_timeout_s")
_PROVIDER_IN_PARAMS = ("fallback", "retries")


def _agent_extras(agent: AgentConfig) -> dict:
    return {k: v for k, v in asdict(agent).items() if k not in _AGENT_IN_PARAMS}


def _provider_extras(provider: ProviderOptions) -> dict:
    return {k: v for k, v in asdict(provider).items() if k not in _PROVIDER_IN_PARAMS}


def _from_text(text: str, annotation: str):
    """A ``TrainConfig`` field back from its MLflow param string (annotations are strings here)."""
    if text == "None" and "None" in annotation:
        return None
    kind = annotation.split("|")[0].strip()
    if kind == "bool":
        return text == "True"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def spec_from_params(
    params: dict[str, str],
    thread_id: str | None = None,
    state_db: str | None = None,
    checkpoint_dir: str | None = None,
) -> RunSpec:
    """The ``RunSpec`` whose ``as_params()`` gave ``params`` (a logged run's MLflow params)."""
    train_kwargs: dict = {}
    for f in fields(TrainConfig):
        if f.name == "extra":
            train_kwargs["extra"] = {
                k.removeprefix("extra."): v for k, v in params.items() if k.startswith("extra.")
            }
        elif f.name == "regime" and "regime" in params:
            train_kwargs["regime"] = parse_regime(params["regime"])
        elif f.name in params:
            train_kwargs[f.name] = _from_text(params[f.name], str(f.type))
    if checkpoint_dir is not None:
        train_kwargs["checkpoint_dir"] = checkpoint_dir
    agent = AgentConfig(
        prompt=params.get("prompt", "full"),
        reflection=params.get("reflection", "log_only"),
        budget=int(params.get("budget", 8)),
        decision_timeout_s=float(params.get("decision_timeout_s", 120.0)),
        **{k.removeprefix("agent."): json.loads(v) for k, v in params.items() if k.startswith("agent.")},
    )
    fallback = params.get("fallback", "rules")
    provider = ProviderOptions(
        fallback=None if fallback == "None" else fallback,
        retries=int(params.get("retries", 2)),
        **{
            k.removeprefix("provider."): json.loads(v) for k, v in params.items() if k.startswith("provider.")
        },
    )
    bounds = json.loads(params["bounds"]) if "bounds" in params else {}
    return RunSpec(
        train=TrainConfig(**train_kwargs),
        controller=params.get("controller", "rules"),
        agent=agent,
        provider=provider,
        bounds=Bounds(**{k: tuple(v) if isinstance(v, list) else v for k, v in bounds.items()}),
        every=int(params.get("every", 1)),
        state_db=state_db or params.get("state_db", RunSpec.state_db),
        thread_id=thread_id,
        guard=params.get("guard", "True") == "True",
        guard_grad_factor=float(params.get("guard_grad_factor", 1e3)),
        keep_checkpoint_dir=params.get("keep_checkpoint_dir", "False") == "True",
    )


@dataclass
class EpochOutcome:
    report: EpochReport
    decision: dict | None  # what the graph's apply node committed (None: no decision this epoch)
    state: dict | None  # the graph's final state for this invocation
    guard: str | None = None  # what the guard did after this epoch (None: nothing)
    guard_rollbacks: int = 0  # guard rollbacks in this run so far, this epoch's included


@dataclass
class RunResult:
    epochs: list[EpochOutcome]
    test: EvalResult | None  # None: a user's loop (LoopTrainer) that keeps its test split to itself
    thread_id: str
    # what ``run()`` did with the checkpoint folder once the run was complete: "removed", "kept" (asked to
    # keep it), None (the run had none)
    checkpoints: str | None = None


class RunObserver(Protocol):
    def on_start(self, runner: AgentRunner) -> None: ...
    def on_epoch(self, runner: AgentRunner, outcome: EpochOutcome) -> None: ...
    def on_end(self, runner: AgentRunner, result: RunResult) -> None: ...


def _largest_grad_norm(report: EpochReport) -> float | None:
    norms = [v for v in (report.grad_norms or {}).values() if math.isfinite(v)]
    return max(norms) if norms else None


def agent_report(trainer: Trainer, report: EpochReport, total_epochs: int) -> dict:
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
        trainer: Trainer | None = None,
        observers: list | None = None,
        approver: Callable[[dict], object] | None = None,
        model=None,
    ):
        self.spec = spec
        # spec.agent.approve: each proposal that changes something is put to ``approver(proposal) -> answer``
        # (see graphs.graph.parse_review for answers); None: ask in the terminal.
        self.approver = approver
        self.trainer = trainer or Trainer.from_config(spec.train)
        # revert_on_harm needs the pre-decision checkpoint of the previous decision's boundary
        self.trainer.pre_decision_keep = max(2, spec.every + 1)
        self.controls = TrainerControls(self.trainer, spec.bounds)
        self.thread_id = spec.thread_id or f"run-{uuid.uuid4().hex[:12]}"
        self.observers = list(observers or [])
        self.outcomes: list[EpochOutcome] = []
        self.graph = None
        self._conn = None
        self.guard_rollbacks = 0
        self._fork_from: str | None = None  # resume: the graph checkpoint the next decision continues from
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
        if self._fork_from is not None:  # resume: continue from the state the trainer checkpoint matches
            config = {**config, "configurable": {**config["configurable"], "checkpoint_id": self._fork_from}}
            self._fork_from = None
        state = self.graph.invoke(payload, config, durability="exit")
        while state.get("__interrupt__"):  # a human review (spec.agent.approve): ask, then resume the graph
            if self.approver is None:
                from ..agents.approval import TerminalApprover

                self.approver = TerminalApprover()
            answer = self.approver(state["__interrupt__"][0].value)
            state = self.graph.invoke(Command(resume=answer), self.graph_config, durability="exit")
        return state

    def step(self) -> EpochOutcome:
        """Train one epoch; guard against a diverged epoch; at a decision boundary (not after the last
        epoch) invoke the graph."""
        return self.after_epoch(self.trainer.run_epoch())

    def after_epoch(self, report: EpochReport) -> EpochOutcome:
        """Everything after an epoch was trained: guard, decision (at a boundary), observers, resume state.
        ``step()`` calls it after ``trainer.run_epoch()``; a user's own loop calls it (through
        ``mimic_learn.integrations.Steering``) after ``LoopTrainer.end_epoch()``."""
        guard = self.guard_epoch(report) if (self.graph is not None and self.spec.guard) else None
        decision, state = None, None
        total = self.spec.train.epochs
        if self.graph is not None and report.epoch % self.spec.every == 0 and report.epoch < total:
            seen = agent_report(self.trainer, report, total)
            if guard:
                seen["guard"] = guard
                seen["events"] = [*seen.get("events", []), guard]
            state = self.invoke_graph({"epoch": report.epoch, "report": seen})
            decision = state.get("decision")
        outcome = EpochOutcome(report, decision, state, guard, self.guard_rollbacks)
        self.outcomes.append(outcome)
        for obs in self.observers:
            obs.on_epoch(self, outcome)
        self.save_resume_state()
        return outcome

    # ------------------------------------------------------------------ guard
    def guard_epoch(self, report: EpochReport) -> str | None:
        """Roll back an epoch that diverged (non-finite loss) or whose gradients exploded; return the note
        the graph sees, or None when the epoch was sound."""
        trainer = self.trainer
        if not report.finite:
            why = (
                f"train loss {report.train_loss} / validation loss {report.val_loss} / {report.monitor} "
                f"{metric_value(report.to_dict(), report.monitor)}: not finite"
            )
            target = trainer.last_good  # the newest boundary with finite losses: before this epoch
        else:
            now = _total_grad_norm(report)
            before = _total_grad_norm(trainer.history[-2]) if len(trainer.history) > 1 else None
            factor = self.spec.guard_grad_factor
            exploded = not math.isfinite(now) or (before is not None and before > 0 and now > factor * before)
            if not exploded:
                return None
            why = f"gradient norm exploded ({now:.3g}, previous epoch {before or float('nan'):.3g}, limit x{factor:g})"
            target = trainer.pre_decision.get(report.epoch - 1)  # last_good is this (finite) epoch already
        if target is None or target["epoch"] >= report.epoch:
            log.warning("guard: epoch %d %s, but there is no earlier state to restore", report.epoch, why)
            return None
        last = self.graph_state().get("last_decision") if self.graph is not None else None
        blamed = (
            f"the decision after epoch {last['epoch']} ({describe_changes(last['changes'])}) is marked harmful"
            if last
            else "no decision to blame"
        )
        trainer.restore_weights(target, reason="guard rollback")
        # The restored state is now this boundary's good and pre-decision state (also on disk, for resume).
        fresh = trainer.checkpoint()
        trainer.last_good = trainer.pre_decision[trainer.epoch] = fresh
        ckpt_dir = self.spec.train.resolved_checkpoint_dir()
        if ckpt_dir is not None and (ckpt_dir / f"epoch_{trainer.epoch:04d}.pt").exists():
            trainer.save_checkpoint(ckpt_dir / f"epoch_{trainer.epoch:04d}.pt", fresh)
        self.guard_rollbacks += 1
        note = (
            f"Guard after epoch {report.epoch}: {why}; {blamed}. Weights, optimizer state and knobs were "
            f"restored to the state after epoch {target['epoch']} (lr {trainer.lr:.3g})."
        )
        log.warning(note)
        return note

    # ------------------------------------------------------------------ resume
    def _resume_files(self) -> list[Path]:
        ckpt_dir = self.spec.train.resolved_checkpoint_dir()
        return sorted(ckpt_dir.glob("resume_*.pt")) if ckpt_dir is not None and ckpt_dir.exists() else []

    def save_resume_state(self) -> Path | None:
        """After a completed epoch (trained, decided, observed): what ``load_resume_state`` continues from."""
        ckpt_dir = self.spec.train.resolved_checkpoint_dir()
        if ckpt_dir is None:
            return None
        for obs in self.observers:  # what they logged up to here must be durable before this file exists
            hook = getattr(obs, "on_checkpoint", None)
            if hook is not None:
                hook(self)
        trainer = self.trainer
        graph_id = None
        if self.graph is not None:
            graph_id = self.graph.get_state(self.graph_config).config["configurable"].get("checkpoint_id")
        state = {
            "epoch": trainer.epoch,
            "trainer": trainer.checkpoint(),  # after the decision: its knobs are in
            "pending_events": list(trainer._pending_events),
            "deltas": {k: v.detach().cpu() for k, v in trainer._deltas.items() if not callable(v)},
            "last_good": trainer.last_good,
            "pre_decision": dict(trainer.pre_decision),
            "graph_checkpoint_id": graph_id,
            "guard_rollbacks": self.guard_rollbacks,
            "outcomes": json.dumps(
                [
                    {
                        "report": o.report.to_dict(),
                        "decision": o.decision,
                        "guard": o.guard,
                        "guard_rollbacks": o.guard_rollbacks,
                    }
                    for o in self.outcomes
                ],
                default=str,
            ),
        }
        path = trainer.save_checkpoint(ckpt_dir / f"resume_{trainer.epoch:04d}.pt", state)
        for old in self._resume_files()[:-RESUME_KEEP]:
            old.unlink(missing_ok=True)
        return path

    def load_resume_state(self) -> int:
        """Continue from the newest ``resume_<epoch>.pt``; returns the epoch it resumes after (0: none).

        Not restored: a gradient-dependent weight delta staged by the last decision (a function, not data)."""
        files = self._resume_files()
        if not files:
            if self.graph is not None and self.graph_state():
                self.checkpointer.delete_thread(self.thread_id)  # a decision made before any epoch was saved
            return 0
        state = Trainer.load_checkpoint(files[-1])
        trainer = self.trainer
        trainer.restore(state["trainer"])
        trainer._pending_events = list(state["pending_events"])
        trainer._deltas = {k: v.to(trainer.device) for k, v in state["deltas"].items()}
        trainer.last_good = state["last_good"]
        trainer.pre_decision = dict(state["pre_decision"])
        self.guard_rollbacks = state["guard_rollbacks"]
        self.outcomes = [
            EpochOutcome(EpochReport(**o["report"]), o["decision"], None, o["guard"], o["guard_rollbacks"])
            for o in json.loads(state["outcomes"])
        ]
        if self.graph is not None:
            saved = state["graph_checkpoint_id"]
            latest = self.graph.get_state(self.graph_config).config["configurable"].get("checkpoint_id")
            if saved is None and latest is not None:
                self.checkpointer.delete_thread(self.thread_id)
            elif latest != saved:  # the graph saved a later decision than the trainer: continue from ours
                self._fork_from = saved
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
        for pattern in ("epoch_*.pt", "resume_*.pt", "epoch_*.tmp", "resume_*.tmp"):
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


def _total_grad_norm(report: EpochReport) -> float:
    return math.sqrt(sum(v * v for v in report.grad_norms.values()))
