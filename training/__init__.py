"""Training: data, models, and a Trainer that pauses at every epoch boundary. Knows nothing of LLMs."""

from .config import TrainConfig, parse_regime
from .data import DataUnavailableError, TaskData, TensorData, load_task
from .knobs import KNOBS, Knob, register_knob
from .loop import LoopTrainer
from .models import PaperCNN, build_model, resnet18
from .reports import EpochReport, EvalResult, metric_value
from .steerable import Steerable
from .trainer import BaseTrainer, KnobError, ShapeMismatchError, Trainer

__all__ = [
    "KNOBS",
    "BaseTrainer",
    "DataUnavailableError",
    "EpochReport",
    "EvalResult",
    "Knob",
    "LoopTrainer",
    "Steerable",
    "register_knob",
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
