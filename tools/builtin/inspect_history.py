from pydantic import BaseModel, ConfigDict, Field

from ...training.reports import metric_value
from ..controls import TrainerControls
from ..registry import register_tool


class InspectHistoryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_n: int = Field(default=10, ge=1, le=200, description="How many recent epochs to show, in [1, 200].")


@register_tool(args=InspectHistoryArgs, mutating=False)
def inspect_history(ctl: TrainerControls, args: InspectHistoryArgs) -> str:
    """Compact table of the last epochs: train/val loss and accuracy (and the loop's own metrics, if any),
    learning rate, dropout, weight decay, alpha, and what changed between epochs."""
    history = ctl.trainer.history[-args.last_n :]
    if not history:
        return "no epoch has run yet"
    own = list(history[-1].metrics)  # a user loop's own numbers (LoopTrainer)
    cols = ["train_loss", "val_loss", "train_acc", "val_acc", *own]
    lines = [f"epoch | {' | '.join(cols)} | lr | dropout | wd | alpha | changes"]
    for r in history:
        row = r.to_dict()
        numbers = " | ".join(_cell(metric_value(row, c)) for c in cols)
        dropout = "-" if r.dropout is None else f"{r.dropout:.2f}"
        lines.append(
            f"{r.epoch} | {numbers} | {r.lr:.3g} | {dropout} | {r.weight_decay:.3g} | {r.alpha:.2f} | "
            f"{'; '.join(r.events) or '-'}"
        )
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"
