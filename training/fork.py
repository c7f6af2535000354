"""Counterfactual branches: train the same epochs twice from one checkpoint, with and without a decision.

    snap_start = trainer.pre_decision[trainer.epoch]          # the state before this boundary's decision
    shadow = run_branch(trainer, snap_start, epochs=1, train_epoch=trainer.run_epoch)
    # the trainer is exactly as before the call (weights, optimizer, schedule, RNG, history, staged deltas);
    # shadow.reports[-1] is what the next epoch would have reported without the decision

A branch restores ``start`` (model, optimizer, scheduler, knobs and, for our Trainer, the torch and batch-order
RNG states), optionally applies a change (``setup``), trains ``epochs`` epochs with no retention checkpoints
(nothing written to disk), takes the end state, and then puts the trainer back from a snapshot taken on entry.
Because the RNG states travel with the checkpoint, a branch sees the same batches in the same order and draws
the same dropout masks as the real run would from that state: a decision that changes nothing gives a branch
bitwise equal to the real run. A user's loop (``LoopTrainer``) owns its data order and RNG; its branches are
only as comparable as its ``train_epoch`` callback makes them (see ``integrations.Steering``).

Knows nothing of LLMs or tools: ``setup`` is any function of the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .reports import EpochReport, metric_value
from .steerable import Steerable


@dataclass
class BranchResult:
    """What a branch trained: its epochs' reports and its end state (a ``Trainer.checkpoint()``)."""

    reports: list[EpochReport]
    final_state: dict

    @property
    def last(self) -> EpochReport:
        return self.reports[-1]


def run_branch(
    trainer: Steerable,
    start: dict,
    epochs: int,
    train_epoch: Callable[[], EpochReport],
    setup: Callable[[Steerable], None] | None = None,
) -> BranchResult:
    """Train ``epochs`` epochs from checkpoint ``start`` (after ``setup(trainer)``, if given) and return what
    happened; the trainer is left exactly as it was before the call."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1 for a branch")
    saved = trainer.snapshot()
    try:
        trainer.restore(start)
        with trainer.shadow_branch():
            if setup is not None:
                setup(trainer)
            reports = [train_epoch() for _ in range(epochs)]
            final = trainer.checkpoint()
    finally:
        trainer.restore_snapshot(saved)
    return BranchResult(reports, final)


def branch_numbers(report: EpochReport) -> dict:
    """The numbers a branch is judged by: the monitored one and the losses."""
    data = report.to_dict()
    return {
        "epoch": report.epoch,
        "monitor": metric_value(data, report.monitor),
        "val_loss": report.val_loss,
        "train_loss": report.train_loss,
        "val_acc": report.val_acc,
        "metrics": dict(report.metrics),
    }


def effect(acted: float | None, baseline: float | None, mode: str) -> float | None:
    """acted − baseline in the monitor's direction (positive: acting was better); None when either is missing,
    NaN when either is not finite (the verdict then says the branch diverged)."""
    if acted is None or baseline is None:
        return None
    if not (math.isfinite(acted) and math.isfinite(baseline)):
        return float("nan")
    return (acted - baseline) if mode == "max" else (baseline - acted)
