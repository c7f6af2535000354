from pydantic import BaseModel, ConfigDict

from ..controls import TrainerControls
from ..registry import register_tool


class InspectPerClassArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register_tool(args=InspectPerClassArgs, mutating=False)
def inspect_per_class(ctl: TrainerControls, args: InspectPerClassArgs) -> str:
    """Validation accuracy per class after the last epoch, worst classes first, with the change since the
    epoch before. Computed on the validation split (never the test set)."""
    history = ctl.trainer.history
    if not history:
        return "no epoch has run yet"
    now = history[-1].per_class_val_acc
    if not now:
        return f"epoch {history[-1].epoch}: this run reports no per-class numbers"
    before = history[-2].per_class_val_acc if len(history) > 1 else None
    order = sorted(range(len(now)), key=lambda c: now[c])
    parts = []
    for c in order:
        change = f" ({now[c] - before[c]:+.3f})" if before else ""
        parts.append(f"class {c}: {now[c]:.3f}{change}")
    return f"epoch {history[-1].epoch} per-class validation accuracy, worst first: " + "; ".join(parts)
