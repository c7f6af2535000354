"""What the framework callbacks (Lightning, Hugging Face) share: their options, building the ``Steering``
from the framework's objects, one decision per period, ending the MLflow run (FAILED on an exception)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..tracking.tags import INTEGRATION
from .loop import Steering


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One-element tensors and plain numbers as floats; anything else is left out."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out


class SteeringCallback:
    """The framework-independent half of a ``MimicCallback``.

    ``epochs``: the number of decision periods the controller is told about; default the run's epochs (with
    ``every_n_steps``: its optimizer steps / N, rounded up). Every other keyword goes to ``Steering``
    (``controller``, ``prompt``, ``reflection``, ``instruction``, ``knobs``, ``tracking_uri``, ``experiment``, ...)."""

    framework = "framework"

    def __init__(
        self,
        *,
        controller: Any = "rules",
        monitor: str = "val_loss",
        mode: str = "min",
        every_n_steps: int | None = None,
        epochs: int | None = None,
        run_name: str | None = None,
        **steering_kwargs: Any,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1 (or None: decide once per epoch)")
        agent = steering_kwargs.get("agent")
        reflection = steering_kwargs.get("reflection") or getattr(agent, "reflection", None)
        if reflection == "counterfactual" or (
            isinstance(controller, str) and controller.startswith("oracle")
        ):
            raise ValueError(
                f"reflection={reflection!r} / controller={controller!r} trains the same epoch again from a "
                f"checkpoint (a shadow branch), which the {self.framework} trainer cannot do from a callback; "
                "use another reflection policy (log_only, memory, revert_on_harm) and controller here, or steer "
                "your own loop with mimic_learn.integrations.Steering(..., train_epoch=...)"
            )
        for taken in ("model", "optimizer", "scheduler"):
            if taken in steering_kwargs:
                raise TypeError(
                    f"{taken}= is taken from the {self.framework} trainer; do not pass it to MimicCallback"
                )
        self.controller = controller
        self.monitor, self.mode = monitor, mode
        self.every_n_steps = every_n_steps
        self.epochs = epochs
        self.run_name = run_name or self.framework
        self.steering_kwargs = steering_kwargs
        self.steering: Steering | None = None
        self.outcomes: list = []  # one EpochOutcome per decision period
        self.run_id: str | None = None  # the MLflow run (after the first period)
        self._last_step = 0  # the framework's global step at the last period's end

    def _start(self, model, optimizer: torch.optim.Optimizer, scheduler, periods: int, step: int) -> None:
        self.steering = Steering(
            model,
            optimizer,
            scheduler,
            epochs=periods,
            controller=self.controller,
            monitor=self.monitor,
            mode=self.mode,
            run_name=self.run_name,
            **{"steps_per_epoch": self.every_n_steps, **self.steering_kwargs},
        )
        self.outcomes, self.run_id = [], None
        self._last_step = step

    def _decide(self, metrics: Mapping[str, float], step: int) -> None:
        self.outcomes.append(self.steering.epoch_end(metrics))
        self._last_step = step
        if self.run_id is None and self.steering.run_id is not None:
            import mlflow

            self.run_id = self.steering.run_id
            mlflow.MlflowClient().set_tag(self.run_id, INTEGRATION, self.framework)

    def _finish(self) -> None:
        steering, self.steering = self.steering, None
        steering.close()

    def fail(self, exc: BaseException) -> None:
        """End the MLflow run as FAILED (the error propagates from the framework). Nothing open: no-op."""
        if self.steering is None:
            return
        steering, self.steering = self.steering, None
        steering.__exit__(type(exc), exc, exc.__traceback__)
