from pydantic import BaseModel, ConfigDict

from ..controls import TrainerControls
from ..registry import register_tool


class InspectGradNormsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _trend(now: float, before: float | None) -> str:
    if before is None or before == 0:
        return "  new"
    ratio = now / before
    return f"x{ratio:.2f}" + (" up" if ratio > 1.2 else " down" if ratio < 0.8 else "")


@register_tool(args=InspectGradNormsArgs, mutating=False)
def inspect_grad_norms(ctl: TrainerControls, args: InspectGradNormsArgs) -> str:
    """Per-layer gradient L2 norms (mean over the last epoch's steps), their trend against the epoch before,
    and each layer's weight norm. Also lists the parameter names that propose_weight_delta accepts."""
    history = ctl.trainer.history
    if not history:
        return "no epoch has run yet"
    last = history[-1].grad_norms
    prev = history[-2].grad_norms if len(history) > 1 else {}
    params = dict(ctl.trainer.model.named_parameters())
    lines = [f"epoch {history[-1].epoch} gradient norms (layer: grad_norm trend | weight_norm):"]
    for name, value in last.items():
        weight = params[name].detach().norm().item() if name in params else float("nan")
        lines.append(f"{name}: {value:.3g} {_trend(value, prev.get(name))} | {weight:.3g}")
    return "\n".join(lines)
