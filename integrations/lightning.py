"""Steer a PyTorch Lightning run: a ``Callback`` that runs the controller graph at each epoch boundary.

    pip install 'mimic-learn[lightning]'

    from mimic_learn.integrations.lightning import MimicCallback

    trainer = L.Trainer(max_epochs=20, callbacks=[MimicCallback(controller="rules", monitor="val_loss")])
    trainer.fit(module, train_loader, val_loader)

It is ``mimic_learn.integrations.Steering`` (read its docstring) wired to Lightning's hooks:

* ``on_train_start`` builds the ``Steering`` from the run's real torch optimizer (``trainer.optimizers[0]``),
  the ``LightningModule`` and the first LR scheduler, if any;
* ``on_train_epoch_end`` closes the epoch with ``trainer.callback_metrics`` (whatever the module logs with
  ``self.log(..., on_epoch=True)``: name it ``val_loss``, ``train_loss``, ... or pass ``monitor=``). The
  decision is applied to the optimizer and module before the next training step. Why this hook and not
  ``on_validation_epoch_end``: Lightning runs validation *inside* the training epoch, so
  ``on_validation_epoch_end`` comes first (and also fires for the sanity check and for mid-epoch validation
  with ``val_check_interval``); ``on_train_epoch_end`` comes once per epoch, after that epoch's validation,
  and sees both the epoch-aggregated training metrics and the validation metrics;
* ``on_train_end`` ends the MLflow run; ``on_exception`` ends it as FAILED.

Lightning steps an epoch-interval LR scheduler at the epoch's last batch, before ``on_train_epoch_end``: the
lr the controller sees (and MLflow logs) at a boundary is the one the next epoch would use, and a ``set_lr``
is exactly the lr the next epoch trains with; it rescales the scheduler's ``base_lrs``, so the schedule goes on
from there.

``every_n_steps=N`` decides every N optimizer steps (``trainer.global_step``) instead, for long epochs, with
the same graph: each period of N steps is one "epoch" to the controller (and in MLflow), judged by the latest
metrics Lightning has at that step (step-level logs, and the last validation's). A shorter last period is
reported at the end of training.

Only the first optimizer is steered (``trainer.optimizers[0]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as exc:  # the core never needs Lightning; this module does
    raise ImportError(
        "mimic_learn.integrations.lightning needs PyTorch Lightning 2.x (the `lightning` package): "
        "pip install 'mimic-learn[lightning]'"
    ) from exc

from ._callback import SteeringCallback, to_floats


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer itself: ``trainer.optimizers`` holds it, ``LightningOptimizer`` wraps it."""
    return getattr(optimizer, "_optimizer", optimizer)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Lightning's ``callback_metrics`` as plain floats. A metric logged with both ``on_step`` and
    ``on_epoch`` appears three times (``x``, ``x_step``, ``x_epoch``); ``x`` already holds the current one
    (the step's value, at an epoch end the epoch's), so the two forks are left out."""
    out = to_floats(metrics)
    forks = [n for n in out if n.endswith(("_step", "_epoch")) and n.rsplit("_", 1)[0] in out]
    return {n: v for n, v in out.items() if n not in forks}


class MimicCallback(SteeringCallback, pl.Callback):
    """Runs the controller graph at each epoch end (or every ``every_n_steps`` optimizer steps) of a
    Lightning run and applies its decision to the run's optimizer and module. See the module docstring and
    ``SteeringCallback`` for the options."""

    framework = "lightning"

    # ------------------------------------------------------------------ building
    def _periods(self, trainer: pl.Trainer) -> int:
        if self.epochs is not None:
            return self.epochs
        if self.every_n_steps is not None:
            steps = trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise ValueError(
                    "every_n_steps needs a finite run (max_epochs or max_steps); or pass epochs=<periods>"
                )
            return max(1, math.ceil((int(steps) - trainer.global_step) / self.every_n_steps))
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError(
                f"trainer.max_epochs={trainer.max_epochs}: the controller needs to know how many epochs the "
                "run has; set max_epochs, or pass epochs=<n> to MimicCallback"
            )
        return trainer.max_epochs - trainer.current_epoch

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise ValueError("MimicCallback needs an optimizer: configure_optimizers returned none")
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        optimizer = torch_optimizer(trainer.optimizers[0])
        self._start(pl_module, optimizer, scheduler, self._periods(trainer), trainer.global_step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module, optimizer) -> None:
        # Lightning computes the gradients inside optimizer.step(closure): only now, after the closure and
        # before the update, do they exist to be clipped to the max_grad_norm knob
        if self.steering is not None:
            self.steering.trainer.clip_gradients()

    # ------------------------------------------------------------------ the boundary
    def _end_period(self, trainer: pl.Trainer) -> None:
        metrics = scalar_metrics(trainer.callback_metrics)
        if self.monitor not in metrics:
            raise ValueError(
                f"the monitored metric {self.monitor!r} is not in trainer.callback_metrics at step "
                f"{trainer.global_step} (there: {', '.join(metrics) or 'nothing'}); log it in the "
                f"LightningModule (self.log({self.monitor!r}, value)), or pass monitor=<one of those>"
            )
        self._decide(metrics, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steering is not None and self.every_n_steps is None:
            self._end_period(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # global_step counts optimizer steps; with gradient accumulation several batches share one.
        if (
            self.steering is not None
            and self.every_n_steps is not None
            and trainer.global_step > self._last_step
            and trainer.global_step % self.every_n_steps == 0
        ):
            self._end_period(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steering is None:
            return
        if self.every_n_steps is not None and trainer.global_step > self._last_step:
            self._end_period(trainer)  # the shorter last period
        self._finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.fail(exception)  # ends the MLflow run FAILED
