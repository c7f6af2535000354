from pydantic import BaseModel, ConfigDict, Field

from ..args import Number, reason_field
from ..controls import TrainerControls
from ..registry import register_tool


class SetWeightDecayArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_decay: Number = Field(
        description="L2 weight decay of the optimizer. Absolute bounds [0, 0.1]; at most x10 or /10 per decision when non-zero."
    )
    reason: str = reason_field()


@register_tool(args=SetWeightDecayArgs, mutating=True)
def set_weight_decay(ctl: TrainerControls, args: SetWeightDecayArgs) -> str:
    """Set the optimizer weight decay (L2 regularisation) from the next epoch on. Raise it against overfitting."""
    return ctl.stage_knob("weight_decay", args.weight_decay, args.reason, "set_weight_decay")
