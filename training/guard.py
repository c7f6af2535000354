"""The epoch guard: roll back an epoch that diverged before anyone decides from its weights.

    guard = EpochGuard(grad_factor=1e3)
    report = trainer.run_epoch()
    trip = guard.inspect(trainer, report)               # None: the epoch was sound
    if trip is not None:
        note = guard.roll_back(trip, controls, blamed="no decision to blame")

An epoch *trips* the guard when its train or validation loss (or the monitored number) is not finite, or when
its total gradient norm grew more than ``grad_factor`` times over the previous epoch's. The rollback target is
the newest boundary with finite losses (``last_good``) for a non-finite epoch, and the boundary before the
epoch for an explosion with finite losses (``last_good`` is that epoch already). The rollback goes through the
caller's ``revert`` (``tools.controls.TrainerControls.revert``): the restored state becomes this boundary's
good and pre-decision state, so the decision that follows starts from sound weights.

Knows nothing of LLMs: the caller says which decision is blamed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from .reports import EpochReport, metric_value
from .steerable import Steerable

log = logging.getLogger(__name__)


class Reverter(Protocol):
    """What the guard rolls back through (``TrainerControls``)."""

    trainer: Steerable

    def revert(self, ckpt: dict, reason: str, *, good: bool = False) -> dict: ...


@dataclass
class GuardTrip:
    """An epoch that tripped the guard: why, and the checkpoint to go back to."""

    epoch: int
    why: str
    target: dict


def total_grad_norm(report: EpochReport) -> float:
    return math.sqrt(sum(v * v for v in report.grad_norms.values()))


class EpochGuard:
    def __init__(self, grad_factor: float = 1e3):
        self.grad_factor = grad_factor  # "exploded": total grad norm > this x the previous epoch's
        self.rollbacks = 0  # rollbacks so far in this run

    def inspect(self, trainer: Steerable, report: EpochReport) -> GuardTrip | None:
        """The trip, or None when the epoch was sound (or there is no earlier state to go back to)."""
        if not report.finite:
            why = (
                f"train loss {report.train_loss} / validation loss {report.val_loss} / {report.monitor} "
                f"{metric_value(report.to_dict(), report.monitor)}: not finite"
            )
            target = trainer.last_good  # the newest boundary with finite losses: before this epoch
        else:
            now = total_grad_norm(report)
            before = total_grad_norm(trainer.history[-2]) if len(trainer.history) > 1 else None
            factor = self.grad_factor
            exploded = not math.isfinite(now) or (before is not None and before > 0 and now > factor * before)
            if not exploded:
                return None
            why = f"gradient norm exploded ({now:.3g}, previous epoch {before or float('nan'):.3g}, limit x{factor:g})"
            target = trainer.pre_decision.get(report.epoch - 1)  # last_good is this (finite) epoch already
        if target is None or target["epoch"] >= report.epoch:
            log.warning("guard: epoch %d %s, but there is no earlier state to restore", report.epoch, why)
            return None
        return GuardTrip(report.epoch, why, target)

    def roll_back(self, trip: GuardTrip, controls: Reverter, blamed: str) -> str:
        """Restore ``trip.target`` through ``controls.revert``; return the note the controller sees."""
        controls.revert(trip.target, reason="guard rollback", good=True)
        self.rollbacks += 1
        note = (
            f"Guard after epoch {trip.epoch}: {trip.why}; {blamed}. Weights, optimizer state and knobs were "
            f"restored to the state after epoch {trip.target['epoch']} (lr {controls.trainer.lr:.3g})."
        )
        log.warning(note)
        return note
