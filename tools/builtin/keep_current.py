from pydantic import BaseModel, ConfigDict

from ..args import reason_field
from ..controls import TrainerControls
from ..registry import register_tool


class KeepCurrentArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = reason_field()


@register_tool(args=KeepCurrentArgs, mutating=True)
def keep_current(ctl: TrainerControls, args: KeepCurrentArgs) -> str:
    """Explicitly keep every setting as it is for the next epoch (a deliberate 'no change', with a reason)."""
    ctl.record_keep(args.reason)
    staged = ", ".join(sorted(ctl.pending)) or "nothing"
    return f"keeping current settings; other changes staged in this decision: {staged}"
