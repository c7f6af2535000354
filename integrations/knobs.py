"""User knobs: a number of *your* training loop (an entropy coefficient, a clip range, a loss weight) that the
controller may set, through a ``set_<name>`` tool, exactly like lr or dropout.

    coef = {"entropy": 0.01}
    knob = UserKnob("entropy_coef", low=0.0, high=0.05,
                    get=lambda: coef["entropy"], set=lambda v: coef.__setitem__("entropy", v),
                    description="weight of the entropy bonus in the policy loss")
    steering = Steering(model, optimizer, epochs=20, monitor="mean_return", mode="max", knobs=[knob])

What a knob gets, and what it does not (yet):
    * a ``set_<name>`` tool whose argument is validated against ``[low, high]`` (plus ``max_step``, an
      absolute change per decision, if given); a rejection names the argument, the range and the current
      value, as for the built-in knobs;
    * staging like the built-in knobs: the setter runs when the decision is committed, before the next epoch,
      and a knob set to its current value is recorded as kept; if committing the built-in knobs fails, the
      user knobs are put back;
    * its value each epoch beside your metrics (the controller sees it; MLflow logs it).
    * not: rollbacks (a rollback restores the model and optimizer, not your knob) and ``adjust``.
This is deliberately small and lives beside ``Steering``; the built-in knobs are listed in tools/controls.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, create_model

from ..tools.args import Number, reason_field
from ..tools.controls import CommitResult, StagedChange, TrainerControls, _same
from ..tools.errors import ToolArgumentError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
BUILTIN = ("lr", "dropout", "weight_decay", "alpha", "rollback")


@dataclass
class UserKnob:
    name: str
    low: float
    high: float
    get: Callable[[], float]
    set: Callable[[float], None]
    description: str = ""
    max_step: float | None = None  # largest absolute change per decision (None: anywhere in [low, high])

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in BUILTIN:
            raise ValueError(
                f"knob name {self.name!r}: use lower-case letters, digits and _ (up to 41 characters), "
                f"not one of the built-in knobs {', '.join(BUILTIN)}"
            )
        if not self.low < self.high:
            raise ValueError(f"knob {self.name!r}: low={self.low} must be below high={self.high}")


class KnobControls(TrainerControls):
    """``TrainerControls`` plus the user's knobs: their tools stage here; ``commit`` applies them too."""

    def __init__(self, trainer, bounds=None, knobs: list[UserKnob] | None = None):
        super().__init__(trainer, bounds)
        self.knobs = {k.name: k for k in knobs or []}

    def current(self, knob: str) -> float | None:
        if knob in self.knobs:
            return float(self.knobs[knob].get())
        return super().current(knob)

    def allowed_range(self, knob: str) -> tuple[float, float]:
        if knob not in self.knobs:
            return super().allowed_range(knob)
        k, cur = self.knobs[knob], self.current(knob)
        if k.max_step is None:
            return k.low, k.high
        return max(k.low, cur - k.max_step), min(k.high, cur + k.max_step)

    def check_knob(self, knob: str, value: float) -> tuple[float, str]:
        if knob not in self.knobs:
            return super().check_knob(knob, value)
        low, high = self.allowed_range(knob)
        return self.check_number(knob, value, low, high, f"{self.current(knob):.6g}")

    def commit(self) -> CommitResult:
        with self._lock:
            mine = [self.pending.pop(k) for k in list(self.pending) if k in self.knobs]
        noop = [c for c in mine if _same(self.current(c.key), c.value)]
        changes = [c for c in mine if c not in noop]
        before = {c.key: self.knobs[c.key].get() for c in changes}
        done: list[StagedChange] = []
        try:
            for c in sorted(changes, key=lambda c: c.seq):
                self.knobs[c.key].set(float(c.value))
                done.append(c)
            result = super().commit()
        except Exception:
            for c in reversed(done):
                self.knobs[c.key].set(before[c.key])
            raise
        result.applied += sorted(changes, key=lambda c: c.seq)
        result.kept += [f"{c.key} already {c.value:.6g} (no change)" for c in noop]
        return result


class KnobTool(BaseTool):
    """``set_<name>`` for one user knob, bound to one ``KnobControls``."""

    controls: Any
    knob: Any
    handle_tool_error: bool = True

    def _parse_input(self, tool_input, tool_call_id):  # validated in _run, with our message
        return tool_input

    def _to_args_and_kwargs(self, tool_input, tool_call_id):
        return (tool_input,), {}

    def _run(self, tool_input, run_manager=None) -> str:
        raw = tool_input if isinstance(tool_input, dict) else {"value": tool_input}
        name = self.knob.name
        try:
            args = self.args_schema.model_validate(raw)
            reply = self.controls.stage_knob(name, getattr(args, name), args.reason, self.name)
        except ToolArgumentError as exc:
            self.controls.record_call(self.name, raw, False, str(exc))
            raise
        except ValueError as exc:  # pydantic: a missing, extra or non-numeric argument
            low, high = self.controls.allowed_range(name)
            message = (
                f"{self.name} rejected: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}; "
                f"arguments: {name} (a number in [{low:.6g}, {high:.6g}]; current {name} is "
                f"{self.controls.current(name):.6g}) and reason"
            )
            self.controls.record_call(self.name, raw, False, message)
            raise ToolArgumentError(message, name) from None
        self.controls.record_call(self.name, raw, True, reply)
        return reply

    def live_bounds(self) -> dict[str, tuple[float, float, float]]:
        name = self.knob.name
        return {name: (*self.controls.allowed_range(name), self.controls.current(name))}


def knob_tools(controls: KnobControls) -> list[BaseTool]:
    """One ``set_<name>`` tool per user knob of ``controls``."""
    tools = []
    for knob in controls.knobs.values():
        args = create_model(
            f"Set_{knob.name}_Args",
            __config__=ConfigDict(extra="forbid"),
            **{
                knob.name: (
                    Number,
                    Field(description=f"The new {knob.name}, within [{knob.low:g}, {knob.high:g}]."),
                ),
                "reason": (str, reason_field()),
            },
        )
        what = f" ({knob.description})" if knob.description else ""
        step = f"; it may change by at most {knob.max_step:g} per decision" if knob.max_step else ""
        tools.append(
            KnobTool(
                name=f"set_{knob.name}",
                description=f"Set {knob.name}{what} from the next epoch on. Allowed: [{knob.low:g}, "
                f"{knob.high:g}]{step}. A user knob of this training loop.",
                args_schema=args,
                controls=controls,
                knob=knob,
            )
        )
    return tools
