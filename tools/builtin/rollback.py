from pydantic import BaseModel, ConfigDict

from ..args import reason_field
from ..controls import TrainerControls
from ..errors import ToolArgumentError
from ..registry import register_tool


class RollbackArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = reason_field()


@register_tool(args=RollbackArgs, mutating=True)
def rollback(ctl: TrainerControls, args: RollbackArgs) -> str:
    """Restore the weights, optimizer state and knobs of the last good checkpoint (the newest epoch boundary
    whose losses were finite). Use it after a divergence. Other changes of this decision apply on top of it."""
    good = ctl.trainer.last_good
    if good is None:
        raise ToolArgumentError("rollback: there is no last good checkpoint yet", "rollback")
    replaced = ctl.stage("rollback", good["epoch"], args.reason, "rollback")
    return f"rollback to the state after epoch {good['epoch']} staged{replaced}"
