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

from ._callback import SteeringCallback, to_floats

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
    kept = {n: v for n, v in logs.items() if n not in _LEFT_OUT and not n.endswith(_LEFT_OUT_SUFFIXES)}
    return {hf_metric_name(n): v for n, v in to_floats(kept).items()}


class MimicCallback(SteeringCallback, TrainerCallback):
    """Runs the controller graph at each epoch end (or every ``every_n_steps`` optimizer steps) of a Hugging
    Face ``Trainer`` run and applies its decision to the Trainer's optimizer and model. See the module
    docstring and ``SteeringCallback`` for the options (``monitor`` may use HF's names: ``eval_loss``)."""

    framework = "hf"

    def __init__(self, *, monitor: str = "val_loss", run_name: str = "hugging-face", **options: Any):
        super().__init__(monitor=hf_metric_name(monitor), run_name=run_name, **options)
        self.metrics: dict[str, float] = {}  # the latest logged value of each metric
        self._period_ended = False  # a boundary passed; the graph runs at the next event

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
        self._start(model, torch_optimizer(optimizer), scheduler, self._periods(state), state.global_step)
        self.metrics = {}
        self._period_ended = False

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
        self._decide(self.metrics, state.global_step)

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
        self._finish()
