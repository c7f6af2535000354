"""Training: data, models, and a Trainer that pauses at every epoch boundary. Knows nothing of LLMs."""

from .config import TrainConfig, parse_regime
from .data import DataUnavailableError, TaskData, TensorData, load_task
from .models import PaperCNN, build_model, resnet18
from .trainer import EpochReport, KnobError, ShapeMismatchError, Trainer, metric_value

__all__ = [
    "DataUnavailableError",
    "EpochReport",
    "KnobError",
    "PaperCNN",
    "ShapeMismatchError",
    "TaskData",
    "TensorData",
    "TrainConfig",
    "Trainer",
    "build_model",
    "load_task",
    "metric_value",
    "parse_regime",
    "resnet18",
]
