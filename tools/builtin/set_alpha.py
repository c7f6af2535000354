from pydantic import BaseModel, ConfigDict, Field

from ..args import Number, reason_field
from ..controls import TrainerControls
from ..registry import register_tool


class SetAlphaArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: Number = Field(
        description="Blend weight of your proposed weight delta in each update: (1-alpha)*optimizer step + alpha*delta/N. 0 disables deltas. Bounds [0, 1]; at most +-0.5 per decision."
    )
    reason: str = reason_field()


@register_tool(args=SetAlphaArgs, mutating=True)
def set_alpha(ctl: TrainerControls, args: SetAlphaArgs) -> str:
    """Set alpha, the weight of the proposed weight delta (propose_weight_delta) in every update of the next epoch: update = (1-alpha)*(optimizer step) + alpha*delta/N. alpha=0 means plain optimizer steps."""
    return ctl.stage_knob("alpha", args.alpha, args.reason, "set_alpha")
