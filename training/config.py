"""Every knob of a training run, with its default, in one place.

The CLI builds a ``TrainConfig`` from its flags; the Python API takes one directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

TASKS = ("digits", "mnist", "mnist32", "cifar10", "synthetic", "external")  # external: a user's own loop
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "plateau", "onecycle", "cosine")


@dataclass
class TrainConfig:
    task: str = "digits"
    # "full", an integer number of training images, or a fraction in (0, 1).
    regime: str | int | float = "full"
    val_size: int | None = None  # None: 5000 for mnist/cifar10, 300 for digits
    epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 1024
    model: str | None = None  # None: the task's default model
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    step_size: int = 5
    gamma: float = 0.1
    plateau_patience: int = 2
    dropout: float | None = None  # None: keep the model's own dropout
    alpha: float = 0.0
    seed: int = 0
    # The seed that draws the train/val subset (None: ``seed``, so each seed draws its own subset). Set it to
    # compare seeds on one fixed subset (reproduce --fixed-subset); ``seed`` still sets weights and batch order.
    data_seed: int | None = None
    # A rare class: "<k>:<f>" keeps the fraction f (0 < f <= 1, at least one image) of class k's training images
    # after the regime's subset is drawn; validation and test stay balanced. None: no class is thinned.
    rare_class: str | None = None
    data_dir: str = "data"
    download: bool = False
    num_threads: int | None = None
    device: str = "auto"
    # Keep the train/val/test tensors on the training device (None: on a CUDA device, yes). Batches are then
    # indexed where they live instead of being gathered on the CPU and copied every step.
    data_on_device: bool | None = None
    augment: bool = False  # random crop + flip for CIFAR-shaped inputs
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 3
    # The validation number decisions are judged by: val_acc, val_loss, macro_f1 or recall_class_<k> (the recall
    # of class k; "recall:<k>" is read as that). Lower is better only for val_loss.
    monitor: str = "val_acc"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} is out of range [0, 1]")
        self.monitor = parse_monitor(self.monitor)
        if self.rare_class is not None:
            parse_rare_class(self.rare_class)

    def as_params(self) -> dict[str, str]:
        """Flat string form, for MLflow params."""
        out = {}
        for key, value in asdict(self).items():
            if key == "extra":
                out.update({f"extra.{k}": str(v) for k, v in value.items()})
            else:
                out[key] = str(value)
        return out

    def resolved_checkpoint_dir(self) -> Path | None:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else None


def parse_rare_class(text: str) -> tuple[int, float]:
    """``"3:0.05"`` -> (3, 0.05): class 3 keeps 5% of its training images."""
    usage = f"rare_class={text!r}: use <class index>:<fraction kept in (0, 1]>, e.g. 3:0.05"
    k, sep, f = str(text).partition(":")
    try:
        k_int, f_float = int(k), float(f)
    except ValueError:
        raise ValueError(usage) from None
    if not sep or k_int < 0 or not 0.0 < f_float <= 1.0:
        raise ValueError(usage)
    return k_int, f_float


MONITORS = ("val_acc", "val_loss", "macro_f1", "recall_class_<k>")


def parse_monitor(monitor: str) -> str:
    """``recall:7`` -> ``recall_class_7``; the other names pass if they are one of ``MONITORS``."""
    text = str(monitor).strip()
    if text.startswith("recall:"):
        text = "recall_class_" + text.removeprefix("recall:").strip()
    if text in MONITORS[:3]:
        return text
    k = text.removeprefix("recall_class_")
    if text.startswith("recall_class_") and k.isdigit():
        return f"recall_class_{int(k)}"
    raise ValueError(
        f"monitor={monitor!r} is not one of val_acc, val_loss, macro_f1, recall_class_<k> (or recall:<k>), "
        "k a class index"
    )


def monitor_mode(monitor: str) -> str:
    """Which direction is better for a monitored number of our Trainer."""
    return "min" if monitor == "val_loss" else "max"


def parse_regime(regime: str | int | float) -> str | int | float:
    """'full' stays 'full'; '600' -> 600; 600.0 -> 600; '0.1' -> 0.1."""
    usage = f"regime={regime!r}: use 'full', an integer count >= 1 or a fraction in (0, 1)"
    if isinstance(regime, bool):
        raise ValueError(usage)
    if isinstance(regime, int):
        if regime < 1:
            raise ValueError(usage)
        return regime
    if isinstance(regime, float):
        value = regime
    else:
        text = str(regime).strip().lower()
        if text == "full":
            return "full"
        if text.lstrip("+-").isdigit():
            return parse_regime(int(text))
        try:
            value = float(text)
        except ValueError as exc:
            raise ValueError(usage) from exc
    # A whole-number float such as 600.0 is a count; anything else must be a fraction.
    if math.isfinite(value) and value >= 1 and value.is_integer():
        return int(value)
    if not 0 < value < 1:
        raise ValueError(f"regime={regime!r}: a fraction must lie in (0, 1)")
    return value
