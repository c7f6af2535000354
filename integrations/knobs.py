"""User knobs: a number of *your* training loop (an entropy coefficient, a clip range, a loss weight) that the
controller may set, through a ``set_<name>`` tool, exactly like lr or dropout.

    coef = {"entropy": 0.01}
    knob = UserKnob("entropy_coef", low=0.0, high=0.05,
                    get=lambda: coef["entropy"], set=lambda v: coef.__setitem__("entropy", v),
                    description="weight of the entropy bonus in the policy loss")
    steering = Steering(model, optimizer, epochs=20, monitor="mean_return", mode="max", knobs=[knob])

A ``UserKnob`` is an entry of the knob table (``training.knobs.Knob``) whose getter and setter act on your own
objects instead of the trainer, so it goes through the same code as the built-in knobs:
    * a ``set_<name>`` tool from the same factory (``tools.builtin.set_knobs.knob_tool``), its argument
      validated against ``[low, high]`` (plus ``max_step``, an absolute change per decision, if given); a
      rejection names the argument, the range and the current value, as for the built-in knobs;
    * staging and committing in ``TrainerControls``: the setter runs when the decision is committed, before the
      next epoch, a knob set to its current value is recorded as kept, and if committing fails half-way the
      knobs already set are put back;
    * its value each epoch beside your metrics (the controller sees it; MLflow logs it).
    * not: rollbacks (a rollback restores the model and optimizer, not your knob) and ``adjust``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.tools import BaseTool

from ..tools.builtin.set_knobs import knob_tool
from ..tools.controls import TrainerControls
from ..tools.registry import bind_tool
from ..training.knobs import KNOBS, Knob, check_name


class UserKnob(Knob):
    """A knob of the user's loop: ``get()`` reads it, ``set(value)`` changes it (no trainer argument)."""

    def __init__(
        self,
        name: str,
        low: float,
        high: float,
        get: Callable[[], float],
        set: Callable[[float], None],  # noqa: A002 - the knob's setter, as in Knob
        description: str = "",
        max_step: float | None = None,  # largest absolute change per decision (None: anywhere in [low, high])
    ):
        check_name(name)
        if name in KNOBS:
            raise ValueError(
                f"knob name {name!r}: use lower-case letters, digits and _ (up to 41 characters), "
                f"not one of the built-in knobs {', '.join(KNOBS)}"
            )
        if not low < high:
            raise ValueError(f"knob {name!r}: low={low} must be below high={high}")
        what = f" ({description})" if description else ""
        super().__init__(
            name=name,
            label=name,
            bounds=(low, high),
            get=get,
            set=set,
            trust="step" if max_step is not None else None,
            max_change=max_step,
            argument=f"The new {name}.",
            doc=f"Set {name}{what} from the next epoch on. A user knob of this training loop.",
        )
        object.__setattr__(self, "description", description)

    @property
    def low(self) -> float:
        return self.bounds[0]

    @property
    def high(self) -> float:
        return self.bounds[1]

    @property
    def max_step(self) -> float | None:
        return self.max_change

    def value(self, trainer: Any) -> float:
        return float(self.get())

    def apply(self, trainer: Any, value: float) -> None:
        self.set(float(value))


class KnobControls(TrainerControls):
    """``TrainerControls(trainer, bounds, knobs)``, under its old name (integrations/loop.py builds it)."""

    def __init__(self, trainer, bounds=None, knobs: list[UserKnob] | None = None):
        super().__init__(trainer, bounds, knobs or [])


def knob_tools(controls: TrainerControls) -> list[BaseTool]:
    """One ``set_<name>`` tool per user knob of ``controls``, from the same factory as the built-in ones."""
    return [bind_tool(knob_tool(knob), controls) for knob in controls.user_knobs.values()]
