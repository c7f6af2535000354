from pydantic import BaseModel, ConfigDict, Field

from ..args import Number, reason_field
from ..controls import TrainerControls
from ..registry import register_tool


class SetLrArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: Number = Field(
        description="New learning rate (absolute value, e.g. 0.0005). Absolute bounds [1e-6, 1.0]; at most "
        "x10 or /10 of the current lr per decision."
    )
    reason: str = reason_field()


@register_tool(args=SetLrArgs, mutating=True)
def set_lr(ctl: TrainerControls, args: SetLrArgs) -> str:
    """Set the optimizer's learning rate from the next epoch on. With StepLR/ReduceLROnPlateau the schedule's
    later factors multiply the new value; with OneCycleLR the rest of the cycle is rescaled by new/current."""
    return ctl.stage_knob("lr", args.lr, args.reason, "set_lr")
