import torch
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
    whose losses were finite). Use it after a divergence. Other changes of this decision apply on top of it.
    Refused when the current state is that checkpoint (nothing to roll back)."""
    good = ctl.trainer.last_good
    if good is None:
        raise ToolArgumentError("rollback: there is no last good checkpoint yet", "rollback")
    trainer = ctl.trainer
    if good["epoch"] == trainer.epoch and _same_state(trainer.model.state_dict(), good["model"]):
        raise ToolArgumentError(
            f"rollback: the last good state is the current one (after epoch {good['epoch']}, losses finite); "
            "there is nothing to roll back. To change nothing, call keep_current",
            "rollback",
        )
    replaced = ctl.stage("rollback", good["epoch"], args.reason, "rollback")
    return f"rollback to the state after epoch {good['epoch']} staged{replaced}"


def _same_state(now: dict, saved: dict) -> bool:
    return now.keys() == saved.keys() and all(torch.equal(now[k].cpu(), saved[k].cpu()) for k in now)
