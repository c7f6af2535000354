"""TrainerControls: what the tools act on. Mutating tools *stage*; ``commit()`` applies a whole decision.

The knobs are the table in ``training/knobs.py`` (plus a ``Steering`` loop's own ``UserKnob`` entries):
``current``, ``allowed_range``, ``check_knob`` and ``commit`` iterate it, so a new entry needs nothing here.
Two calls for the same knob within one decision: the later one wins and its reply says so. ``commit()``
applies everything in a fixed order (rollback, then the knobs by their table ``order``: weight decay, lr,
dropout, alpha, ..., then weight deltas) and takes effect from the next epoch. If applying fails half-way
the knobs are put back as they were.

The graph runs a decision's tool calls one at a time, in the model's order. Staging still takes a lock:
Python callers may stage from several threads (tests/unit/test_tools.py stages from eight at once).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, make_dataclass

import torch

from ..training import checkpoints
from ..training.knobs import KNOBS as KNOB_TABLE
from ..training.knobs import Knob
from ..training.trainer import Trainer
from .errors import ToolArgumentError
from .records import show_value


def _bounds_fields() -> list[tuple]:
    """``<knob>``: absolute bounds, and ``<knob>_max_factor`` / ``<knob>_max_step``: the trust region."""
    fields = [(k.name, tuple[float, float], field(default=k.bounds)) for k in KNOB_TABLE.values()]
    fields += [
        (f"{k.name}_max_{k.trust}", float, field(default=k.max_change))
        for k in KNOB_TABLE.values()
        if k.trust is not None
    ]
    # ||delta|| over the epoch <= this fraction of the layer's weight norm
    fields.append(("delta_max_fraction", float, field(default=0.1)))
    fields.append(("clamp", bool, field(default=False)))
    return fields


Bounds = make_dataclass("Bounds", _bounds_fields())
Bounds.__module__ = __name__
Bounds.__doc__ = """Absolute bounds per knob plus a per-decision trust region, one pair of fields per entry of the
knob table (``lr=(1e-6, 1.0)``, ``lr_max_factor=10.0``, ``dropout_max_step=0.3``, ...). ``clamp=True`` clamps
instead of rejecting (the tool's reply then says it clamped)."""

KNOBS = KNOB_TABLE  # the live table, by name (``key in KNOBS``; tracking reads it)


@dataclass
class StagedChange:
    key: str  # "lr", "dropout", ..., "rollback", or "delta:<param name>"
    value: object
    reason: str
    tool: str
    seq: int
    note: str = ""


@dataclass
class CommitResult:
    applied: list[StagedChange] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # keep_current reasons

    @property
    def changed_knobs(self) -> list[str]:
        return [c.key for c in self.applied]


class TrainerControls:
    """The staging area over one paused trainer. ``knobs``: a user loop's own entries (``UserKnob``), beside
    the table's; each gets a ``set_<name>`` tool (``tools.builtin.set_knobs.knob_tool``)."""

    def __init__(self, trainer: Trainer, bounds: Bounds | None = None, knobs: Iterable[Knob] = ()):
        self.trainer = trainer
        self.bounds = bounds or Bounds()
        self.user_knobs: dict[str, Knob] = {k.name: k for k in knobs}
        self._lock = threading.Lock()
        self._seq = 0
        self.pending: dict[str, StagedChange] = {}
        self.keep_reasons: list[str] = []
        self.calls: list[dict] = []  # every tool call of the current decision: name, args, accepted, reply

    # ------------------------------------------------------------------ ranges
    def knob(self, name: str) -> Knob | None:
        """The table entry (or user knob) called ``name``; None for rollback, deltas and unknown names."""
        return self.user_knobs.get(name) or KNOB_TABLE.get(name)

    def current(self, knob: str) -> float | None:
        entry = self.knob(knob)
        return entry.value(self.trainer) if entry is not None else None

    def limits(self, knob: str) -> tuple[tuple[float, float], float | None]:
        """The absolute bounds and the trust region's size: from ``Bounds`` for a table knob (an entry added
        after ``Bounds`` was built, or a user knob, brings its own)."""
        entry = self.knob(knob)
        if entry.name in self.user_knobs:
            return entry.bounds, entry.max_change
        bounds = getattr(self.bounds, knob, entry.bounds)
        change = getattr(self.bounds, f"{knob}_max_{entry.trust}", entry.max_change) if entry.trust else None
        return tuple(bounds), change

    def allowed_range(self, knob: str) -> tuple[float, float]:
        """Absolute bounds intersected with this decision's trust region around the current value. A factor
        region around 0 is the whole of the bounds (x10 of nothing is nothing)."""
        entry = self.knob(knob)
        (low, high), change = self.limits(knob)
        cur = self.current(knob)
        if cur is None or change is None:
            return low, high
        if entry.trust == "factor" and cur > 0:
            return max(low, cur / change), min(high, cur * change)
        if entry.trust == "step":
            return max(low, cur - change), min(high, cur + change)
        return low, high

    def check_number(self, arg: str, value: float, low: float, high: float, current) -> tuple[float, str]:
        """Return (value, note) or raise ToolArgumentError naming the argument, range and current value."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolArgumentError(
                f"{arg}={value!r} is not a number; allowed range [{low:.6g}, {high:.6g}]; current {arg} is {current}",
                arg,
            )
        value = float(value)
        check_finite(arg, value, low, high, current)
        if low <= value <= high:
            return value, ""
        # The trust region's edges are products (0.0003 * 10 == 0.0029999999999999996, 0.6 + 0.3 ==
        # 0.8999999999999999): a value at the documented edge must not be rejected for float rounding.
        for edge in (low, high):
            if math.isclose(value, edge, rel_tol=1e-9):
                return edge, ""
        if self.bounds.clamp:
            clamped = min(max(value, low), high)
            return (
                clamped,
                f" (clamped from {value:.6g} to {clamped:.6g}: allowed range [{low:.6g}, {high:.6g}])",
            )
        raise ToolArgumentError(
            f"{arg}={value:.6g} is out of range [{low:.6g}, {high:.6g}]; current {arg} is {current}", arg
        )

    def check_knob(self, knob: str, value: float) -> tuple[float, str]:
        entry = self.knob(knob)
        cur = self.current(knob)
        if entry is None or cur is None:
            raise ToolArgumentError(f"{knob} cannot be set: this model has no {knob} modules", knob)
        if entry.off is not None and not isinstance(value, bool) and same_value(entry.off, value):
            return float(entry.off), ""  # turning a knob off is always allowed
        low, high = self.allowed_range(knob)
        (abs_low, abs_high), _ = self.limits(knob)
        try:
            return self.check_number(knob, value, low, high, f"{cur:.6g}")
        except ToolArgumentError as exc:
            if (low, high) != (abs_low, abs_high):
                raise ToolArgumentError(
                    f"{exc} (absolute bounds [{abs_low:.6g}, {abs_high:.6g}]; the per-decision trust region "
                    f"narrows them around the current value)",
                    knob,
                ) from None
            raise

    # ------------------------------------------------------------------ staging
    def stage(self, key: str, value: object, reason: str, tool: str, note: str = "") -> str:
        with self._lock:
            self._seq += 1
            previous = self.pending.get(key)
            self.pending[key] = StagedChange(key, value, reason, tool, self._seq, note)
        if previous is not None:
            return f" (replaces the earlier {previous.tool} call for {key} in this decision: {show_value(previous.value)})"
        return ""

    def stage_knob(self, knob: str, value: float, reason: str, tool: str) -> str:
        """Check ``value`` against the knob's bounds and trust region, stage it, and return the tool's reply."""
        checked, note = self.check_knob(knob, value)
        replaced = self.stage(knob, checked, reason, tool)
        return f"{knob} {self.current(knob):.6g} -> {checked:.6g} staged; applies from the next epoch{note}{replaced}"

    def record_keep(self, reason: str) -> None:
        with self._lock:
            self.keep_reasons.append(reason)

    def record_call(self, name: str, args: dict, accepted: bool, reply: str) -> None:
        with self._lock:
            self.calls.append({"tool": name, "args": args, "accepted": accepted, "reply": reply})

    def discard(self) -> None:
        with self._lock:
            self.pending.clear()
            self.keep_reasons = []

    def commit(self) -> CommitResult:
        """Apply the staged decision to the paused trainer, atomically; it takes effect from the next epoch."""
        with self._lock:
            changes = sorted(self.pending.values(), key=lambda c: (self._order(c.key), c.seq))
            kept = list(self.keep_reasons)
            self.pending.clear()
            self.keep_reasons = []
        if not any(c.key == "rollback" for c in changes):
            # A knob set to the value it already has changes nothing: it is recorded as kept, not as a change,
            # so that reflection never judges (or reverts) a decision that did nothing.
            # (``current`` is None for rollback and delta keys, so only scalar knobs can be no-ops.)
            noop = [c for c in changes if same_value(self.current(c.key), c.value)]
            kept += [f"{c.key} already {show_value(c.value)} (no change)" for c in noop]
            changes = [c for c in changes if c not in noop]
        t = self.trainer
        undo = self._undo_point(changes)
        done: list[tuple[Knob, float | None]] = []
        try:
            deltas = {}
            for change in changes:
                key, entry = change.key, self.knob(change.key)
                if key == "rollback":
                    if t.last_good is None:
                        raise ToolArgumentError("rollback: there is no last good checkpoint yet", "rollback")
                    t.restore_weights(t.last_good, reason=f"rollback ({change.reason})")
                elif entry is not None:
                    before = entry.value(t)
                    entry.apply(t, change.value)
                    done.append((entry, before))
                elif key.startswith("delta:"):
                    deltas[key.removeprefix("delta:")] = change.value
            if deltas:
                t.set_delta(deltas)
        except Exception:
            self._roll_back(undo, done)
            raise
        return CommitResult(applied=changes, kept=kept)

    def _order(self, key: str) -> float:
        """Rollback first, then the knobs by their table ``order``, then weight deltas."""
        if key == "rollback":
            return -math.inf
        entry = self.knob(key)
        return entry.order if entry is not None else math.inf

    def _undo_point(self, changes: list[StagedChange]) -> dict:
        t = self.trainer
        return {
            "trainer": checkpoints.commit_point(t),
            # A rollback replaces weights and optimizer state: keep them so that a later failure can undo it.
            "state": t.checkpoint() if any(c.key == "rollback" for c in changes) else None,
        }

    def _roll_back(self, undo: dict, done: list[tuple[Knob, float | None]]) -> None:
        """Put the trainer back as it was before a commit that failed half-way."""
        t = self.trainer
        if undo["state"] is not None:
            t.restore_weights(undo["state"], reason=None)
        for entry, before in reversed(done):
            if before is not None:
                entry.restore(t, before) if entry.restore is not None else entry.apply(t, before)
        checkpoints.rewind(t, undo["trainer"])

    def revert(self, ckpt: dict, reason: str, *, good: bool = False) -> dict:
        """Put the paused trainer back to ``ckpt`` (weights, optimizer, schedule, knobs; epoch count, history and
        RNG go on) and make that this boundary's pre-decision state (``good``: its last good one too). Every
        revert outside a decision (reflection's, the runner's guard) comes here; returns the new checkpoint."""
        self.trainer.restore_weights(ckpt, reason=reason)
        return self.trainer.mark_boundary(good)

    def new_decision(self) -> None:
        """Forget the previous decision's call log (pending changes are discarded too)."""
        self.discard()
        with self._lock:
            self.calls = []

    # ------------------------------------------------------------------ helpers for delta tools
    def param(self, name: str) -> torch.Tensor:
        params = dict(self.trainer.model.named_parameters())
        if name not in params:
            raise ToolArgumentError(
                f"layer={name!r} is not a parameter of this model; allowed: {', '.join(params)}", "layer"
            )
        return params[name]

    def stage_raw_delta(self, name: str, delta, reason: str = "raw delta from Python") -> str:
        """Python API (not a model-facing tool): stage a raw tensor or nested list with a strict shape check."""
        param = self.param(name)
        try:
            tensor = torch.as_tensor(delta, dtype=param.dtype)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ToolArgumentError(
                f"delta for {name!r} is not a rectangular numeric array ({exc}); expected shape {tuple(param.shape)}",
                "delta",
            ) from None
        if tuple(tensor.shape) != tuple(param.shape):
            raise ToolArgumentError(
                f"delta for {name!r} has shape {tuple(tensor.shape)}; expected shape {tuple(param.shape)}",
                "delta",
            )
        if not torch.isfinite(tensor).all():
            raise ToolArgumentError(f"delta for {name!r} contains NaN or inf", "delta")
        # The same trust region as propose_weight_delta: the delta over the epoch is at most
        # bounds.delta_max_fraction of the layer's weight norm.
        size, limit = tensor.norm().item(), self.bounds.delta_max_fraction * param.detach().norm().item()
        note = ""
        if size > limit:
            if not self.bounds.clamp:
                raise ToolArgumentError(
                    f"delta for {name!r} has norm {size:.6g}, above the limit {limit:.6g} "
                    f"({self.bounds.delta_max_fraction:g} of the layer's weight norm); scale it down, or raise "
                    "Bounds(delta_max_fraction=...)",
                    "delta",
                )
            tensor = tensor * (limit / size)
            note = f" (scaled from norm {size:.6g} to the limit {limit:.6g})"
        replaced = self.stage(f"delta:{name}", tensor, reason, "stage_raw_delta", note)
        return (
            f"raw delta for {name} {tuple(param.shape)} staged, norm {min(size, limit):.6g}{note}{replaced}"
        )


def check_finite(arg: str, value: float, low: float, high: float, current: object) -> None:
    """The non-finite guard, checked before the range: with ``Bounds(clamp=True)`` a NaN would otherwise pass
    (``min``/``max`` keep a NaN), so this is what rejects it. Module-level so the fault suite can switch it off."""
    if not math.isfinite(value):
        raise ToolArgumentError(
            f"{arg}={value} is not a finite number; allowed range [{low:.6g}, {high:.6g}]; current {arg} is {current}",
            arg,
        )


def same_value(current: float | None, value: object) -> bool:
    """Whether staging ``value`` would leave a knob at ``current`` unchanged (a no-op)."""
    return (
        current is not None
        and isinstance(value, int | float)
        and math.isclose(current, float(value), rel_tol=1e-12, abs_tol=0.0)
    )
