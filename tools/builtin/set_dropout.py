from pydantic import BaseModel, ConfigDict, Field

from ..args import Number, reason_field
from ..controls import TrainerControls
from ..registry import register_tool


class SetDropoutArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dropout: Number = Field(
        description="Dropout probability for every dropout layer of the model. Absolute bounds [0, 0.9]; at most +-0.3 per decision."
    )
    reason: str = reason_field()


@register_tool(args=SetDropoutArgs, mutating=True)
def set_dropout(ctl: TrainerControls, args: SetDropoutArgs) -> str:
    """Set the dropout probability of every dropout layer of the model from the next epoch on. Raise it when validation loss rises while training loss falls (overfitting); lower it when both are high (underfitting)."""
    return ctl.stage_knob("dropout", args.dropout, args.reason, "set_dropout")
