"""The per-epoch runner: train an epoch, pause, invoke the controller graph, apply, repeat.

    runner = AgentRunner(RunSpec(train=TrainConfig(task="digits", epochs=5), controller="rules"))
    result = runner.run()

The graph is compiled once per run and invoked at every ``every``-th epoch boundary with the run as its
LangGraph ``thread_id``; a SQLite checkpointer keeps its memory across epochs and process restarts.
Observers (``on_start``/``on_epoch``/``on_end``) receive everything: the CLI prints, MLflow tracking logs.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from langgraph.checkpoint.sqlite import SqliteSaver

from ..agents.providers import ProviderOptions, load_chat_model
from ..tools.controls import Bounds, TrainerControls
from ..training.config import TrainConfig
from ..training.trainer import EpochReport, EvalResult, Trainer
from .graph import AgentConfig, build_graph

HISTORY_IN_PROMPT = 10


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

    def as_params(self) -> dict[str, str]:
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
        )
        return params


@dataclass
class EpochOutcome:
    report: EpochReport
    decision: dict | None  # what the graph's apply node committed (None: no decision this epoch)
    state: dict | None  # the graph's final state for this invocation


@dataclass
class RunResult:
    epochs: list[EpochOutcome]
    test: EvalResult
    thread_id: str


class RunObserver(Protocol):
    def on_start(self, runner: AgentRunner) -> None: ...
    def on_epoch(self, runner: AgentRunner, outcome: EpochOutcome) -> None: ...
    def on_end(self, runner: AgentRunner, result: RunResult) -> None: ...


def agent_report(trainer: Trainer, report: EpochReport, total_epochs: int) -> dict:
    """The report the graph sees: the epoch's numbers, the run length and a compact recent history."""
    data = report.to_dict()
    data["total_epochs"] = total_epochs
    data["history"] = [
        {
            k: getattr(r, k)
            for k in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr", "dropout")
        }
        for r in trainer.history[-HISTORY_IN_PROMPT:]
    ]
    return data


class AgentRunner:
    def __init__(self, spec: RunSpec, trainer: Trainer | None = None, observers: list | None = None):
        self.spec = spec
        self.trainer = trainer or Trainer.from_config(spec.train)
        # revert_on_harm needs the pre-decision checkpoint of the previous decision's boundary
        self.trainer.pre_decision_keep = max(2, spec.every + 1)
        self.controls = TrainerControls(self.trainer, spec.bounds)
        self.thread_id = spec.thread_id or f"run-{uuid.uuid4().hex[:12]}"
        self.observers = list(observers or [])
        self.outcomes: list[EpochOutcome] = []
        self.graph = None
        self._conn = None
        if spec.controller != "none":
            self.model = load_chat_model(spec.controller, spec.provider)
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
            )

    def _on_observe(self, epoch: int) -> None:
        for obs in self.observers:
            hook = getattr(obs, "on_decision_start", None)
            if hook is not None:
                hook(self, epoch)

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
        return self.graph.invoke(payload, self.graph_config, durability="exit")

    def step(self) -> EpochOutcome:
        """Train one epoch; at a decision boundary (not after the last epoch) invoke the graph."""
        report = self.trainer.run_epoch()
        decision, state = None, None
        total = self.spec.train.epochs
        if self.graph is not None and report.epoch % self.spec.every == 0 and report.epoch < total:
            state = self.invoke_graph(
                {"epoch": report.epoch, "report": agent_report(self.trainer, report, total)}
            )
            decision = state.get("decision")
        outcome = EpochOutcome(report, decision, state)
        self.outcomes.append(outcome)
        for obs in self.observers:
            obs.on_epoch(self, outcome)
        return outcome

    def run(self) -> RunResult:
        for obs in self.observers:
            obs.on_start(self)
        while self.trainer.epoch < self.spec.train.epochs:
            self.step()
        result = RunResult(self.outcomes, self.trainer.test(), self.thread_id)
        for obs in self.observers:
            obs.on_end(self, result)
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
