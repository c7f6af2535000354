"""Steer a Hugging Face ``Trainer`` run: a ``TrainerCallback`` that runs the controller graph at each epoch end.

    pip install 'mimic-learn[hf]'

    from mimic_learn.integrations.hf import MimicCallback

    args = TrainingArguments(..., eval_strategy="epoch", logging_strategy="epoch", report_to="none")
    Trainer(model, args, train_dataset=..., eval_dataset=..., callbacks=[MimicCallback(controller="rules")]).train()

It is ``mimic_learn.integrations.Steering`` (read its docstring) wired to the Trainer's events:

* ``on_train_begin`` builds the ``Steering`` from the optimizer and LR scheduler the Trainer has just made
  (the torch optimizer inside accelerate's ``AcceleratedOptimizer``). Hugging Face schedulers (``LambdaLR``)
  recompute the lr from ``base_lrs`` at every step; a ``set_lr`` decision rescales ``base_lrs``, so the new lr
  persists and the schedule's shape continues from it;
* the metrics are what the Trainer logs (``on_log``), latest value of each name: its ``loss`` is reported as
  ``train_loss`` and ``eval_<name>`` as ``val_<name>`` (so the default ``monitor="val_loss"`` is HF's
  ``eval_loss``; ``monitor="eval_loss"`` means the same). Speed figures, ``epoch``, ``learning_rate`` and
  ``grad_norm`` are left out (the run logs its own lr and per-parameter gradient norms);
* the decision: the Trainer logs and evaluates *after* ``on_epoch_end`` (``eval_strategy="epoch"`` runs the
  evaluation right after it), so ``on_epoch_end`` only marks the boundary and the graph runs at the next
  event, ``on_epoch_begin``/``on_step_begin`` (or ``on_train_end`` after the last epoch): after that epoch's
  logging and evaluation, before the next optimizer step. The decision is applied to the optimizer and model;
* ``on_train_end`` ends the MLflow run. A Trainer callback sees no exceptions: if ``trainer.train()`` raises,
  call ``callback.fail(exc)`` to end the run as FAILED (or leave it, and it stays RUNNING).

``every_n_steps=N`` decides every N optimizer steps (``state.global_step``) instead, for long epochs, with
the same graph: each period of N steps is one "epoch" to the controller (and in MLflow). Log and evaluate at
that rhythm (``logging_steps=N``, ``eval_strategy="steps"``, ``eval_steps=N``) so each period has fresh
numbers. A shorter last period is reported at the end of training.

Pass ``report_to="none"`` (or keep HF's own MLflow callback: the steering run then nests under its run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # the core never needs transformers; this module does
    raise ImportError(
        "mimic_learn.integrations.hf needs transformers and accelerate: pip install 'mimic-learn[hf]'"
    ) from exc

from .loop import Steering

_LEFT_OUT = {"epoch", "learning_rate", "grad_norm", "total_flos", "step"}
_LEFT_OUT_SUFFIXES = ("_runtime", "_per_second")


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (itself an ``Optimizer`` subclass,
    whose ``step`` calls the inner one's: the inner one is where the step hooks must go)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def hf_metric_name(name: str) -> str:
    """HF's ``loss`` -> ``train_loss``, ``eval_<x>`` -> ``val_<x>``; other names as they are."""
    if name == "loss":
        return "train_loss"
    if name.startswith("eval_"):
        return "val_" + name[len("eval_") :]
    return name


def scalar_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """One ``on_log`` record as steering metrics (renamed; speed figures and bookkeeping left out)."""
    out: dict[str, float] = {}
    for name, value in logs.items():
        if name in _LEFT_OUT or name.endswith(_LEFT_OUT_SUFFIXES):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[hf_metric_name(name)] = float(value)
    return out


class MimicCallback(TrainerCallback):
    """Runs the controller graph at each epoch end (or every ``every_n_steps`` optimizer steps) of a Hugging
    Face ``Trainer`` run and applies its decision to the Trainer's optimizer and model. See the module docstring.

    ``epochs``: the number of decision periods the controller is told about; default the run's epochs
    (with ``every_n_steps``: its optimizer steps / N, rounded up). Every other keyword goes to ``Steering``
    (``controller``, ``prompt``, ``reflection``, ``tracking_uri``, ``experiment``, ...).
    """

    def __init__(
        self,
        *,
        controller: Any = "rules",
        monitor: str = "val_loss",
        mode: str = "min",
        every_n_steps: int | None = None,
        epochs: int | None = None,
        run_name: str = "hugging-face",
        **steering_kwargs: Any,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1 (or None: decide once per epoch)")
        for taken in ("model", "optimizer", "scheduler"):
            if taken in steering_kwargs:
                raise TypeError(
                    f"{taken}= is taken from the Hugging Face Trainer; do not pass it to MimicCallback"
                )
        self.controller = controller
        self.monitor, self.mode = hf_metric_name(monitor), mode
        self.every_n_steps = every_n_steps
        self.epochs = epochs
        self.run_name = run_name
        self.steering_kwargs = steering_kwargs
        self.steering: Steering | None = None
        self.outcomes: list = []  # one EpochOutcome per decision period
        self.run_id: str | None = None  # the MLflow run (after the first period)
        self.metrics: dict[str, float] = {}  # the latest logged value of each metric
        self._period_ended = False  # a boundary passed; the graph runs at the next event
        self._last_step = 0  # state.global_step at the last boundary

    # ------------------------------------------------------------------ building
    def _periods(self, state: TrainerState) -> int:
        if self.epochs is not None:
            return self.epochs
        if self.every_n_steps is not None:
            return max(1, math.ceil((state.max_steps - state.global_step) / self.every_n_steps))
        return max(1, math.ceil(state.num_train_epochs - (state.epoch or 0)))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise ValueError(
                "MimicCallback needs the Trainer's model and optimizer in on_train_begin (got None)"
            )
        scheduler = kwargs.get("lr_scheduler")
        scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
        self.steering = Steering(
            model,
            torch_optimizer(optimizer),
            scheduler,
            epochs=self._periods(state),
            controller=self.controller,
            monitor=self.monitor,
            mode=self.mode,
            run_name=self.run_name,
            **{"steps_per_epoch": self.every_n_steps, **self.steering_kwargs},
        )
        self.outcomes, self.metrics, self.run_id = [], {}, None
        self._period_ended = False
        self._last_step = state.global_step

    # ------------------------------------------------------------------ metrics
    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any
    ) -> None:
        if self.steering is None or not logs or "train_runtime" in logs:
            return  # "train_runtime": the summary of the whole run, logged after the last epoch
        self.metrics.update(scalar_logs(logs))

    # ------------------------------------------------------------------ boundaries
    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.steering is not None and self.every_n_steps is None:
            self._period_ended = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if (
            self.steering is not None
            and self.every_n_steps is not None
            and state.global_step % self.every_n_steps == 0
        ):
            self._period_ended = True

    def _decide_if_due(self, state: TrainerState) -> None:
        if self.steering is None or not self._period_ended:
            return
        self._period_ended = False
        if self.monitor not in self.metrics:
            raise ValueError(
                f"the monitored metric {self.monitor!r} (HF name {self._hf_monitor!r}) was not logged by "
                f"step {state.global_step} (logged: {', '.join(self.metrics) or 'nothing'}); evaluate at each "
                "period (eval_strategy='epoch', or 'steps' with eval_steps=every_n_steps), or monitor "
                "'train_loss' with logging_strategy='epoch' (or logging_steps=every_n_steps)"
            )
        self.outcomes.append(self.steering.epoch_end(self.metrics))
        self._last_step = state.global_step
        if self.run_id is None and self.steering.run_id is not None:
            import mlflow

            self.run_id = self.steering.run_id
            mlflow.MlflowClient().set_tag(self.run_id, "mimic.integration", "hf")

    @property
    def _hf_monitor(self) -> str:
        if self.monitor == "train_loss":
            return "loss"
        return "eval_" + self.monitor[len("val_") :] if self.monitor.startswith("val_") else self.monitor

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._decide_if_due(state)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._decide_if_due(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.steering is None:
            return
        if self.every_n_steps is not None and state.global_step > self._last_step:
            self._period_ended = True  # the shorter last period
        self._decide_if_due(state)
        steering, self.steering = self.steering, None
        steering.close()

    def fail(self, exc: BaseException) -> None:
        """End the MLflow run as FAILED after ``trainer.train()`` raised ``exc`` (the Trainer does not tell
        its callbacks). Does nothing when no run is open."""
        if self.steering is None:
            return
        steering, self.steering = self.steering, None
        steering.__exit__(type(exc), exc, exc.__traceback__)
