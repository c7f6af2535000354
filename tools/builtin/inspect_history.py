from pydantic import BaseModel, ConfigDict, Field

from ..controls import TrainerControls
from ..registry import register_tool


class InspectHistoryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_n: int = Field(default=10, ge=1, le=200, description="How many recent epochs to show, in [1, 200].")


@register_tool(args=InspectHistoryArgs, mutating=False)
def inspect_history(ctl: TrainerControls, args: InspectHistoryArgs) -> str:
    """Compact table of the last epochs: train/val loss and accuracy, learning rate, dropout, weight decay,
    alpha, and what changed between epochs."""
    history = ctl.trainer.history[-args.last_n :]
    if not history:
        return "no epoch has run yet"
    lines = ["epoch | train_loss | val_loss | train_acc | val_acc | lr | dropout | wd | alpha | changes"]
    for r in history:
        dropout = "-" if r.dropout is None else f"{r.dropout:.2f}"
        lines.append(
            f"{r.epoch} | {r.train_loss:.4f} | {r.val_loss:.4f} | {r.train_acc:.4f} | {r.val_acc:.4f} | "
            f"{r.lr:.3g} | {dropout} | {r.weight_decay:.3g} | {r.alpha:.2f} | {'; '.join(r.events) or '-'}"
        )
    return "\n".join(lines)
