"""The ``set_<knob>`` tools: one typed tool per entry of the knob table (training/knobs.py), made by one factory.

The argument is named after the knob (``set_lr(lr=..., reason=...)``); the docstring the model reads is the
entry's ``doc``, and the argument's description says the entry's bounds and trust region in words. A user
loop's own knobs (``integrations.UserKnob``) get their tools from the same factory (``knob_tool``).
"""

from __future__ import annotations

import inspect
import re

from pydantic import BaseModel, ConfigDict, Field, create_model

from ...training.knobs import KNOBS, Knob
from ..args import Number, reason_field
from ..controls import TrainerControls
from ..registry import REGISTRY, ToolSpec


def knob_tool(knob: Knob) -> ToolSpec:
    """The ``set_<name>`` tool of one knob-table entry (or user knob): a typed argument named after the knob,
    a docstring and argument description made from the entry, staging through ``ctl.stage_knob``."""
    tool_name = f"set_{knob.name}"
    args = create_model(
        "Set" + "".join(part.title() for part in knob.name.split("_")) + "Args",
        __config__=ConfigDict(extra="forbid"),
        **{knob.name: (Number, Field(description=argument_text(knob))), "reason": (str, reason_field())},
    )

    def set_knob(ctl: TrainerControls, args: BaseModel) -> str:
        return ctl.stage_knob(knob.name, getattr(args, knob.name), args.reason, tool_name)

    set_knob.__name__ = set_knob.__qualname__ = tool_name
    set_knob.__doc__ = knob.doc or f"Set {knob.label or knob.name} from the next epoch on."
    return ToolSpec(tool_name, set_knob, args, True, inspect.getdoc(set_knob))


def register_knob_tools() -> None:
    """Register the ``set_<name>`` tool of every table entry that has none yet."""
    for knob in KNOBS.values():
        if f"set_{knob.name}" not in REGISTRY:
            spec = knob_tool(knob)
            REGISTRY[spec.name] = spec


def argument_text(knob: Knob) -> str:
    """The argument's description: what it is, its bounds and trust region, the off value, in words."""
    low, high = knob.bounds
    text = f"{knob.argument or f'The new {knob.name}.'} Absolute bounds [{_g(low)}, {_g(high)}]"
    if knob.trust == "factor":
        text += f"; at most x{_g(knob.max_change)} or /{_g(knob.max_change)} of the current {knob.name}"
        text += " per decision (from 0: anywhere within the bounds)" if low == 0 else " per decision"
    elif knob.trust == "step":
        text += f"; at most +-{_g(knob.max_change)} per decision"
    if knob.off is not None:
        text += f"; {_g(knob.off)} turns it off"
    return text + "."


def _g(value: float) -> str:
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}")


register_knob_tools()
