"""``Steerable``: what a trainer offers the layers above it (tools, reflection, the runner) at a pause point.

Two trainers implement it: ``Trainer`` (trains its own epochs: ``run_epoch``) and ``LoopTrainer`` (closes the
epochs a user's loop ran: ``end_epoch``); both get it from ``BaseTrainer``. Code above the training layer
should need nothing else: read the knobs and the history, set knobs (``set_*``), checkpoint and restore.
A revert (weights back to an earlier boundary) goes through ``tools.controls.TrainerControls.revert``, which
also keeps retention straight (``mark_boundary``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .config import TrainConfig
from .reports import EpochReport


@runtime_checkable
class Steerable(Protocol):
    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    device: torch.device
    epoch: int
    history: list[EpochReport]
    events: list[dict]
    monitor: str  # the number decisions are judged by
    mode: str  # "max": higher monitor is better; "min": lower is better
    alpha: float
    steps_per_epoch: int
    init_params: dict[str, torch.Tensor]
    data: object | None  # our TaskData; None for a user's loop
    pre_decision: dict[int, dict]  # retention (checkpoints.Retention)
    pre_decision_keep: int
    last_good: dict | None

    # knobs: read, then set between epochs (from the next epoch on)
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def dropout(self) -> float | None: ...
    @property
    def pending_delta_layers(self) -> list[str]: ...
    def set_lr(self, lr: float) -> None: ...
    def set_dropout(self, p: float) -> None: ...
    def set_weight_decay(self, wd: float) -> None: ...
    def set_alpha(self, alpha: float) -> None: ...
    def set_delta(self, deltas: dict) -> None: ...

    # epochs
    def run_epoch(self) -> EpochReport: ...
    def test(self) -> object | None: ...

    # checkpoints (training/checkpoints.py)
    def checkpoint(self) -> dict: ...
    def restore(self, ckpt: dict) -> None: ...
    def restore_weights(self, ckpt: dict, reason: str | None = "rollback") -> None: ...
    def mark_boundary(self, good: bool) -> dict: ...
    def save_checkpoint(self, path: str | Path, ckpt: dict | None = None) -> Path: ...
    def snapshot(self) -> dict: ...
    def restore_snapshot(self, snap: dict) -> None: ...
    def shadow_branch(self) -> AbstractContextManager[None]: ...
