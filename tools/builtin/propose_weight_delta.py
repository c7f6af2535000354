from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..args import Number, reason_field
from ..controls import TrainerControls
from ..errors import ToolArgumentError
from ..registry import register_tool

Operation = Literal["scale", "shrink_toward_init", "noise", "toward_grad_direction"]


class ProposeWeightDeltaArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: str = Field(
        description="A parameter name of the model, e.g. 'fc.4.weight' (inspect_grad_norms lists them)."
    )
    operation: Operation = Field(
        description="scale: multiply the layer by (1+magnitude), magnitude may be negative; "
        "shrink_toward_init: move toward the initial weights; noise: add random noise; "
        "toward_grad_direction: extra step along the negative current gradient, re-evaluated at every step."
    )
    magnitude: Number = Field(
        description="Size of the epoch's total delta as a fraction of the layer's weight norm, in [0, 0.1] "
        "(scale: [-0.1, 0.1])."
    )
    reason: str = reason_field()


def _unit(t: torch.Tensor) -> torch.Tensor:
    norm = t.norm()
    return t / norm if norm > 0 else torch.zeros_like(t)


@register_tool(args=ProposeWeightDeltaArgs, mutating=True)
def propose_weight_delta(ctl: TrainerControls, args: ProposeWeightDeltaArgs) -> str:
    """Propose a structured weight change for one layer over the next epoch (no matrices needed). Each update
    of the next epoch becomes (1-alpha)*(optimizer step) + alpha*delta/N, so it only acts when alpha > 0
    (see set_alpha). The delta's total size is bounded by a fraction of the layer's weight norm."""
    param = ctl.param(args.layer).detach()
    limit = ctl.bounds.delta_max_fraction
    low = -limit if args.operation == "scale" else 0.0
    m, note = ctl.check_number("magnitude", args.magnitude, low, limit, "none staged")
    weight_norm = param.norm().item()
    if args.operation == "scale":
        delta = m * param.clone()
    elif args.operation == "shrink_toward_init":
        offset = param - ctl.trainer.init_params[args.layer].to(param.device)
        length = min(abs(m) * weight_norm, offset.norm().item())
        if length < abs(m) * weight_norm:
            note += f" (limited to the distance to the initial weights, {length:.3g})"
        delta = -_unit(offset) * length
    elif args.operation == "noise":
        g = torch.Generator(device="cpu").manual_seed(ctl.trainer.config.seed * 1000 + ctl.trainer.epoch)
        delta = _unit(torch.randn(param.shape, generator=g)).to(param.device) * (m * weight_norm)
    elif args.operation == "toward_grad_direction":

        def delta(grad: torch.Tensor, current: torch.Tensor, m=m) -> torch.Tensor:
            return -_unit(grad) * (m * current.norm())

    else:  # pydantic already restricts the literal; kept for type checkers
        raise ToolArgumentError(f"operation={args.operation!r} is unknown", "operation")
    replaced = ctl.stage(f"delta:{args.layer}", delta, args.reason, "propose_weight_delta")
    alpha_note = (
        ""
        if ctl.current("alpha") > 0 or "alpha" in ctl.pending
        else " NOTE: alpha is 0, so this delta has no effect unless you also set_alpha > 0."
    )
    return (
        f"{args.operation} delta for {args.layer} {tuple(param.shape)} staged, norm {abs(m) * weight_norm:.3g} "
        f"({abs(m):.3g} of the weight norm {weight_norm:.3g}){note}{replaced}.{alpha_note}"
    )
