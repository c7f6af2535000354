"""``constant:<action>``: the same action at every boundary, whatever the numbers say: a benchmark anchor.

    mimic-learn eval-controller --controller constant:lr_down --controller rules
    mimic-learn run --controller constant:set_lr:lr=0.003          # a literal call, the same at every boundary

A controller that reads the report must beat every one of these. Relative actions (values match the oracle's
candidates in ``tools.candidates``, so a constant decision is scored from the outcome bank without a new
rollout):

    keep        keep_current
    lr_down     set_lr lr x 0.3
    lr_up       set_lr lr x 3
    lr_up10     set_lr lr x 10 (the trust region's limit)
    dropout_up  set_dropout dropout + 0.1 (rejected by the tool on a model without dropout)
    wd_up       set_weight_decay x 10 (1e-4 from 0)
    rollback    rollback (rejected when there is nothing to undo)

A literal call, ``constant:<tool>:<arg>=<value>[,<arg>=<value>...]`` (or ``constant:<tool>`` for a tool without
arguments), makes exactly that call at every boundary: ``constant:set_weight_decay:weight_decay=0.001``,
``constant:propose_weight_delta:layer=fc.4.weight,operation=scale,magnitude=0.05``. Values are numbers where they
parse as one, else text; the tool and its arguments are checked when the controller is made (the tool's own
bounds and trust region are checked at each call, against the run's current values). ``reproduce``'s
``constant_policy`` arm runs the LLM arm's most frequent call this way (experiments/derived_arms.py).
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, ToolMessage
from pydantic import PrivateAttr, ValidationError

from .protocol import ProtocolChatModel, tool_call

REASON = "constant policy"
ACTIONS = ("keep", "lr_down", "lr_up", "lr_up10", "dropout_up", "wd_up", "rollback")
LITERAL_FORM = "constant:<tool>:<arg>=<value>[,<arg>=<value>...] (e.g. constant:set_lr:lr=0.003)"


def _relative_call(action: str, report: dict) -> tuple[str, dict]:
    lr, dropout, wd = report.get("lr") or 1e-3, report.get("dropout"), report.get("weight_decay") or 0.0
    calls = {
        "keep": ("keep_current", {}),
        "lr_down": ("set_lr", {"lr": lr * 0.3}),
        "lr_up": ("set_lr", {"lr": lr * 3.0}),
        "lr_up10": ("set_lr", {"lr": lr * 10.0}),
        "dropout_up": ("set_dropout", {"dropout": round((dropout or 0.0) + 0.1, 4)}),
        "wd_up": ("set_weight_decay", {"weight_decay": wd * 10 if wd > 0 else 1e-4}),
        "rollback": ("rollback", {}),
    }
    return calls[action]


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def parse_literal(action: str) -> tuple[str, dict[str, float | str]]:
    """``set_lr:lr=0.003`` -> ("set_lr", {"lr": 0.003}); a ValueError names the allowed forms. The tool must be
    registered and the arguments must be its own, of the right types."""
    from ..tools.registry import discover

    name, _, flat = action.partition(":")
    tools = discover()
    allowed = f"use constant:<action> with an action of {', '.join(ACTIONS)}, or {LITERAL_FORM}"
    if name not in tools:
        raise ValueError(
            f"constant:{action}: {name!r} is neither an action nor a tool; {allowed}; tools: {', '.join(sorted(tools))}"
        )
    args: dict[str, float | str] = {}
    for pair in filter(None, flat.split(",")):
        key, eq, text = pair.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise ValueError(f"constant:{action}: {pair!r} is not <arg>=<value>; {allowed}")
        args[key.strip()] = _value(text.strip())
    try:
        tools[name].args.model_validate({**args, "reason": REASON})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
        fields = ", ".join(f for f in tools[name].args.model_fields if f != "reason") or "none"
        raise ValueError(f"constant:{action}: {problems} ({name} takes {fields}); {allowed}") from None
    _check_bounds(action, name, args)
    return name, args


def _check_bounds(action: str, tool: str, args: dict) -> None:
    """A ``set_<knob>`` value outside the knob's absolute bounds would be rejected at every boundary: say so now."""
    from ..training.knobs import KNOBS

    knob = KNOBS.get(tool.removeprefix("set_")) if tool.startswith("set_") else None
    value = args.get(knob.name) if knob is not None else None
    if isinstance(value, float) and not knob.bounds[0] <= value <= knob.bounds[1] and not knob.is_off(value):
        low, high = knob.bounds
        raise ValueError(
            f"constant:{action}: {knob.name}={value:g} is out of range [{low:g}, {high:g}]; "
            f"e.g. constant:{tool}:{knob.name}={min(max(value, low), high):g}"
        )


def literal_action(tool: str, args: dict) -> str:
    """The ``constant:`` controller that makes this call at every boundary (floats written to round-trip)."""
    flat = ",".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items())
    return f"constant:{tool}" + (f":{flat}" if flat else "")


class ConstantChatModel(ProtocolChatModel):
    action: str = "keep"
    _literal: tuple[str, dict] | None = PrivateAttr(default=None)  # (tool, args) of a literal call

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._literal = None if self.action in ACTIONS else parse_literal(self.action)

    @property
    def _llm_type(self) -> str:
        return "mimic-constant"

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        if turn == 0:
            name, args = self._literal or _relative_call(self.action, report)
            return AIMessage(content="", tool_calls=[tool_call(name, {**args, "reason": REASON})])
        errors = [r.content for r in replies if r.status == "error"]
        return AIMessage(content="done" if not errors else f"done; rejected: {errors[0]}")
