"""Steer a training loop you already have: one call at each epoch boundary.

    from mimic_learn.integrations import Steering

    steering = Steering(model, optimizer, epochs=20, controller="rules", monitor="val_mse", mode="min")
    for epoch in range(20):
        ...                                             # your loop: forward, backward, optimizer.step()
        steering.epoch_end({"train_loss": train_loss, "val_mse": val_mse})
    steering.close()

At each ``epoch_end`` the controller graph runs (reflection, tool calls, apply) exactly as with our own
Trainer, and the decision is applied to *your* optimizer and model before the call returns (lr and weight
decay in the optimizer's param groups, dropout in the model's ``nn.Dropout`` modules, weight deltas through
optimizer step hooks, rollbacks by restoring model/optimizer/scheduler state). Every epoch's metrics, tool
call, reflection and LLM trace go to MLflow: one run per ``Steering`` (nested under an active run if there is
one).

``controller`` is a controller string as on the command line (``rules``, ``local``, ``scripted:<file>``,
``openai:<model>``, ...) or any LangChain chat model object that supports tool calling.

Metrics are yours: any names. ``train_loss``/``train_acc``/``val_loss``/``val_acc`` are understood as such;
every other name is shown to the controller as is, and ``monitor``/``mode`` say which number decisions are
judged by (reflection, the ``rules`` controller, ``revert_on_harm``).

Counterfactual reflection (``reflection="counterfactual"``) and the oracle (``controller="oracle:<h>"``) train
shadow branches, which needs a function that trains one epoch of *your* loop:

    def train_one_epoch(epoch: int) -> Mapping[str, float]:
        # train epoch `epoch` (1-based) on the same model/optimizer/scheduler, exactly as your loop does, and
        # return the metrics you would pass to epoch_end. Seed the data order with `epoch` (and draw dropout
        # from a generator seeded the same way) so both branches see the same batches.
        ...
    steering = Steering(model, optimizer, epochs=20, reflection="counterfactual", train_epoch=train_one_epoch)

Steering restores model, optimizer, scheduler and knobs around each branch; your loop's own state (data
iterators, RNG, anything else it keeps) is yours to keep the same. Costs one extra epoch per decision that
changes something (horizon 1; ``counterfactual_horizon`` k: k epochs).
``instruction``: the user's words for the controller (trusted text in every decision's prompt; the ``rules``
controller ignores it); ``steering.note("...")`` (or ``mimic-learn note <run_id> "..."`` from another
terminal) gives the next decision a note, once. ``knobs``: numbers of your own loop the controller may set
(``integrations.knobs.UserKnob``: name, bounds, getter, setter -> a ``set_<name>`` tool).

Long epochs: an "epoch" here is simply the period between two calls. Call ``epoch_end`` every N optimizer
steps (pass ``epochs`` = the number of periods) to decide more often; the Lightning and Hugging Face
callbacks do this with ``every_n_steps``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from langchain_core.language_models import BaseChatModel
from torch import nn

from ..agents.providers import ProviderOptions
from ..graphs.graph import AgentConfig, build_graph
from ..graphs.runner import AgentRunner, EpochOutcome, RunResult, RunSpec
from ..tools.controls import Bounds
from ..tracking.tags import ERROR
from ..training.config import TrainConfig
from ..training.loop import LoopTrainer
from .knobs import KnobControls, UserKnob, knob_tools

log = logging.getLogger(__name__)


class Steering:
    """The controller graph on top of a user's loop. See the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        *,
        epochs: int,
        controller: str | BaseChatModel = "rules",
        monitor: str = "val_loss",
        mode: str = "min",
        prompt: str = "full",
        reflection: str = "log_only",
        every: int = 1,
        bounds: Bounds | None = None,
        agent: AgentConfig | None = None,
        provider: ProviderOptions | None = None,
        approve: bool = False,
        approver: Callable[[dict], dict] | None = None,
        track: bool = True,
        tracking_uri: str | None = None,
        experiment: str = "mimic-user-loop",
        run_name: str = "user-loop",
        log_model: bool = False,
        traces: bool = True,
        state_db: str = ".mimic/graph_state.sqlite",
        checkpoint_dir: str | Path | None = None,
        steps_per_epoch: int | None = None,
        observers: list | None = None,
        train_epoch: Callable[[int], Mapping[str, float]] | None = None,
        counterfactual_horizon: int = 1,
        keep_better: bool = False,
        instruction: str | None = None,
        knobs: list[UserKnob] | None = None,
    ):
        self.trainer = LoopTrainer(
            model,
            optimizer,
            scheduler,
            monitor=monitor,
            mode=mode,
            steps_per_epoch=steps_per_epoch,
            checkpoint_dir=checkpoint_dir,
        )
        spec = RunSpec(
            train=TrainConfig(
                task="external", epochs=epochs, checkpoint_dir=self.trainer.config.checkpoint_dir
            ),
            controller=controller if isinstance(controller, str) else f"custom:{type(controller).__name__}",
            agent=_agent_config(agent, prompt, reflection, approve, instruction),
            provider=provider or ProviderOptions(),
            bounds=bounds or Bounds(),
            every=every,
            state_db=state_db,
            counterfactual_horizon=counterfactual_horizon,
            keep_better=keep_better,
        )
        self.user_train_epoch = train_epoch
        self.runner = AgentRunner(
            spec,
            trainer=self.trainer,
            observers=observers,
            approver=approver,
            model=None if isinstance(controller, str) else controller,
            train_epoch=self._shadow_epoch if train_epoch is not None else None,
        )
        self.knobs = list(knobs or [])
        if self.knobs and self.runner.graph is not None:
            self._steer_user_knobs(spec)
        self.track, self.tracking_uri, self.experiment = track, tracking_uri, experiment
        self.tracker = self._tracker(run_name, log_model, traces) if track else None
        self._started = False
        self._closed = False

    def _steer_user_knobs(self, spec: RunSpec) -> None:
        """Rebuild the graph with a ``set_<name>`` tool per user knob; those tools act on the user's objects."""
        runner = self.runner
        runner.controls = KnobControls(self.trainer, spec.bounds, self.knobs)
        runner.graph = build_graph(
            runner.controls,
            runner.model,
            spec.agent,
            spec.provider,
            runner.checkpointer,
            on_observe=runner._on_observe,
            on_decision=runner._on_decision,
            extra_tools=knob_tools(runner.controls),
        )

    def _tracker(self, run_name: str, log_model: bool, traces: bool):
        """The MLflow observer of this loop's run."""
        from ..tracking import MlflowTracker

        tracker = MlflowTracker(arm=run_name, log_model=log_model, traces=traces)
        self.runner.observers.append(tracker)
        return tracker

    def _shadow_epoch(self):
        """One epoch of a shadow branch: the user's ``train_epoch`` callback, closed like a real epoch."""
        return self.trainer.end_epoch(self.user_train_epoch(self.trainer.epoch + 1))

    @property
    def run_id(self) -> str | None:
        """The MLflow run this loop logs to (after the first ``epoch_end``)."""
        return self.tracker.run_id if self.tracker is not None else None

    def _start(self) -> None:
        if self.track:
            import mlflow

            from .. import tracking

            if mlflow.active_run() is None:  # inside the user's own run: log there (nested), as they set up
                tracking.setup(self.tracking_uri, self.experiment)
        for obs in self.runner.observers:
            obs.on_start(self.runner)
        self._started = True

    def epoch_end(
        self, metrics: Mapping[str, float], per_class_val_acc: list[float] | None = None
    ) -> EpochOutcome:
        """Close the epoch (or period) your loop just ran and let the controller decide; its decision is
        applied to your optimizer/model before this returns. Returns what happened (report, decision)."""
        if self._closed:
            raise RuntimeError("this Steering is closed; build a new one for another run")
        if not self._started:
            self._start()
        taken = [k.name for k in self.knobs if k.name in metrics]
        if taken:
            raise ValueError(f"metrics {taken} have the names of user knobs; rename them")
        # the knobs' values this epoch: the controller sees them, MLflow logs them
        metrics = {**metrics, **{k.name: float(k.get()) for k in self.knobs}}
        report = self.trainer.end_epoch(metrics, per_class_val_acc)
        return self.runner.after_epoch(report)

    def note(self, text: str) -> dict:
        """Queue a note for the next decision (seen once, recorded in the decisions table). From another
        process: ``mimic-learn note <run_id> "text"``."""
        return self.runner.add_note(text, source="python")

    def close(self, test_metrics: Mapping[str, float] | None = None) -> RunResult:
        """End the run: log ``test_metrics`` (if given), the decisions table, plots (and the model if
        ``log_model``) to MLflow; remove the optimizer hooks."""
        if self._closed:
            raise RuntimeError("this Steering is already closed")
        if not self._started:
            self._start()
        self._closed = True
        result = RunResult(self.runner.outcomes, None, self.runner.thread_id)
        try:
            if test_metrics and self.track:
                import mlflow

                named = {
                    k if k.startswith("test") else f"test_{k}": float(v) for k, v in test_metrics.items()
                }
                mlflow.log_metrics(named)
            for obs in self.runner.observers:
                obs.on_end(self.runner, result)
        finally:
            self.trainer.detach()
            self.runner.close()
        return result

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
            return
        # The user's loop raised: the MLflow run ends FAILED with what it logged so far; the error propagates.
        log.warning("the training loop raised %s; the steering run ends as FAILED", exc_type.__name__)
        self._closed = True
        try:
            if self._started and self.tracker is not None and self.tracker.run_id is not None:
                import mlflow

                mlflow.set_tag(ERROR, f"{exc_type.__name__}: {exc}"[:500])
                mlflow.end_run(status="FAILED")
        finally:
            self.trainer.detach()
            self.runner.close()


def _agent_config(
    agent: AgentConfig | None, prompt: str, reflection: str, approve: bool, instruction: str | None
) -> AgentConfig:
    agent = agent or AgentConfig(prompt=prompt, reflection=reflection)
    if approve:
        agent.approve = True
    if instruction is not None:
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be text, got {type(instruction).__name__}")
        agent.instruction = instruction.strip() or None
    return agent
