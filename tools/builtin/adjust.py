from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..args import reason_field
from ..controls import TrainerControls
from ..errors import ToolArgumentError
from ..registry import register_tool

Action = Literal[
    "lr_x0.5",
    "lr_x2",
    "lr_x0.1",
    "dropout_up",
    "dropout_down",
    "weight_decay_up",
    "weight_decay_down",
    "alpha_down",
]
_STEPS = {
    "lr_x0.5": ("lr", lambda v: v * 0.5),
    "lr_x2": ("lr", lambda v: v * 2.0),
    "lr_x0.1": ("lr", lambda v: v * 0.1),
    "dropout_up": ("dropout", lambda v: round(v + 0.1, 4)),
    "dropout_down": ("dropout", lambda v: round(max(0.0, v - 0.1), 4)),
    "weight_decay_up": ("weight_decay", lambda v: v * 3 if v > 0 else 1e-4),
    "weight_decay_down": ("weight_decay", lambda v: v / 3),
    "alpha_down": ("alpha", lambda v: round(max(0.0, v - 0.25), 4)),
}


class AdjustArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Action = Field(
        description="A relative change: lr_x0.5 / lr_x2 / lr_x0.1 multiply the learning rate; dropout_up / "
        "dropout_down move dropout by 0.1; weight_decay_up (x3, or 1e-4 from zero) / weight_decay_down (/3); "
        "alpha_down lowers alpha by 0.25."
    )
    reason: str = reason_field()


@register_tool(args=AdjustArgs, mutating=True)
def adjust(ctl: TrainerControls, args: AdjustArgs) -> str:
    """Make one relative change to training from the next epoch on, without computing a value: halve, double
    or divide by ten the learning rate; raise or lower dropout or weight decay; lower alpha. Same bounds as
    the set_* tools."""
    knob, step = _STEPS[args.action]
    current = ctl.current(knob)
    if current is None:
        raise ToolArgumentError(f"action={args.action!r}: this model has no {knob} to change", "action")
    return ctl.stage_knob(knob, step(current), args.reason, "adjust")
