"""What an epoch reports: ``EpochReport`` (one epoch's numbers), ``EvalResult`` (one split's evaluation) and
``metric_value`` (a named number of a report or a history row)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

STANDARD_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class EpochReport:
    """One epoch's numbers. Our Trainer fills every standard field; a user's loop (``LoopTrainer``) may leave
    the losses or accuracies ``None`` and report its own named numbers in ``metrics``. ``monitor``/``mode``
    name the number decisions are judged by (reflection, rules): our Trainer's is ``val_acc``, higher better."""

    epoch: int
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    per_class_val_acc: list[float]
    grad_norms: dict[str, float]
    lr: float
    dropout: float | None
    weight_decay: float
    alpha: float
    wall_time: float
    steps: int
    delta_layers: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # a user's own named numbers (e.g. val_mse)
    knobs: dict[str, float | None] = field(default_factory=dict)  # every table knob's value (training.knobs)
    monitor: str = "val_acc"
    mode: str = "max"  # "max": higher monitor is better; "min": lower is better

    @property
    def finite(self) -> bool:
        watched = (
            getattr(self, self.monitor)
            if self.monitor in STANDARD_METRICS
            else self.metrics.get(self.monitor)
        )
        values = [self.train_loss, self.val_loss, watched]
        return all(math.isfinite(v) for v in values if v is not None)

    def to_dict(self) -> dict:
        return asdict(self)


def metric_value(report: dict, name: str) -> float | None:
    """A named number of an epoch report (``EpochReport.to_dict()`` or a history row): a standard field,
    else one of the report's own ``metrics``; None when the report does not have it."""
    if name in STANDARD_METRICS:
        return report.get(name)
    own = report.get("metrics") or {}
    if name in own:
        return own[name]
    value = report.get(name)  # a history row carries the loop's numbers flat
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class EvalResult:
    loss: float
    acc: float
    per_class_acc: list[float]  # the recall of each class: correct / examples of that class
    macro_f1: float | None = None  # the mean over classes of 2PR/(P+R) (0 for a class never predicted right)

    def objective(self, monitor: str) -> dict[str, float]:
        """The monitored number when it is not a standard field: ``{"macro_f1": ...}`` or
        ``{"recall_class_7": ...}``; empty for val_acc / val_loss."""
        if monitor == "macro_f1":
            return {"macro_f1": self.macro_f1}
        if monitor.startswith("recall_class_"):
            k = int(monitor.removeprefix("recall_class_"))
            if not 0 <= k < len(self.per_class_acc):
                raise ValueError(
                    f"monitor={monitor!r}: class {k} is out of range [0, {len(self.per_class_acc) - 1}]"
                )
            return {monitor: self.per_class_acc[k]}
        return {}
