"""Steer training loops you already have: a plain-Python entry point (``Steering``) and, as optional
extras, a PyTorch Lightning callback (``mimic_learn.integrations.lightning``) and a Hugging Face
``TrainerCallback`` (``mimic_learn.integrations.hf``). The core never imports those frameworks."""

from .knobs import UserKnob
from .loop import Steering

__all__ = ["Steering", "UserKnob"]
