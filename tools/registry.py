"""The tool registry: one decorated function per tool; adding a tool is one file, nothing else changes.

    from pydantic import BaseModel, Field
    from mimic_learn.tools import TrainerControls, register_tool

    class HalveLrArgs(BaseModel):
        reason: str = Field(description="Why, in one short sentence.")

    @register_tool(args=HalveLrArgs, mutating=True)
    def halve_lr(ctl: TrainerControls, args: HalveLrArgs) -> str:
        '''Halve the learning rate from the next epoch.'''   # <- the model reads this
        value, note = ctl.check_knob("lr", ctl.trainer.lr / 2)
        return f"lr will be {value:.3g}{note}" + ctl.stage("lr", value, args.reason, "halve_lr")

Tools in ``mimic_learn/tools/builtin/`` are discovered automatically; a user's own module only needs to be
imported (``mimic-learn run --tools-module my_tools.py``). A knob's ``set_<name>`` tool needs no file: every
entry of the knob table (training/knobs.py) gets one from ``builtin/set_knobs.py``.

Every call, from Python (``call_tool``) or from LangChain/LangGraph (``as_langchain_tools``), goes through
``call_tool``: pydantic parses the arguments, the tool checks bounds, and any rejection is a
``ToolArgumentError`` whose message names the argument, the allowed range and the current value.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ValidationError

from .controls import TrainerControls
from .errors import ToolArgumentError

ToolFn = Callable[[TrainerControls, Any], str]


@dataclass
class ToolSpec:
    name: str
    fn: ToolFn
    args: type[BaseModel]
    mutating: bool
    description: str

    def json_schema(self) -> dict:
        return self.args.model_json_schema()


REGISTRY: dict[str, ToolSpec] = {}


def register_tool(
    args: type[BaseModel], mutating: bool, name: str | None = None
) -> Callable[[ToolFn], ToolFn]:
    """Register ``fn(ctl, args) -> str`` as a tool. Its docstring is the description the model reads."""

    def decorator(fn: ToolFn) -> ToolFn:
        tool_name = name or fn.__name__
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"tool {tool_name!r} needs a docstring: it is the model's documentation")
        REGISTRY[tool_name] = ToolSpec(tool_name, fn, args, mutating, doc)
        return fn

    return decorator


def discover() -> dict[str, ToolSpec]:
    """Import every module in ``mimic_learn.tools.builtin`` (registering its tools) and return the registry.
    Every entry of the knob table has its ``set_<name>`` tool, also one registered after the first call."""
    from . import builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{module.name}")
    from .builtin.set_knobs import register_knob_tools

    register_knob_tools()
    return REGISTRY


def load_tools_module(path_or_module: str) -> None:
    """Import a user's module of tools, by file path or dotted module name."""
    path = Path(path_or_module)
    if path.suffix == ".py":
        if not path.exists():
            raise FileNotFoundError(f"tools module {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"mimic_user_tools_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(path_or_module)


def _validation_message(spec: ToolSpec, ctl: TrainerControls, raw: dict, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        arg = str(err["loc"][0]) if err["loc"] else "arguments"
        field = spec.args.model_fields.get(arg)
        allowed = field.description if field is not None and field.description else "see the tool's schema"
        if err["type"] == "extra_forbidden":
            parts.append(
                f"{arg} is not an argument of {spec.name}; arguments: {', '.join(spec.args.model_fields)}"
            )
            continue
        if err["type"] == "missing":
            parts.append(f"{arg} is required ({allowed})")
            continue
        current = ctl.current(arg)
        cur_text = f"; current {arg} is {current:.6g}" if isinstance(current, float) else ""
        value = raw.get(arg, None) if isinstance(raw, dict) else raw
        parts.append(f"{arg}={_short(value)} is invalid ({err['msg']}); allowed: {allowed}{cur_text}")
    return f"{spec.name} rejected: " + "; ".join(parts)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def validate_args(spec: ToolSpec, raw_args: dict) -> BaseModel:
    """The argument guard: pydantic parses the model's arguments (types, ``extra="forbid"``, the reason's
    length). Raises ``ValidationError``; ``call_tool`` turns it into a ``ToolArgumentError``."""
    return spec.args.model_validate(raw_args)


def call_tool(name: str, ctl: TrainerControls, raw_args: dict | None = None) -> str:
    """Validate and run one tool call. Raises ``ToolArgumentError`` (nothing changed) on bad input."""
    spec = REGISTRY.get(name) or discover().get(name)  # the built-in tools, even before discover()
    if spec is None:
        raise ToolArgumentError(
            f"unknown tool {name!r}; available tools: {', '.join(sorted(REGISTRY))}", "name"
        )
    return run_tool(spec, ctl, raw_args)


def run_tool(spec: ToolSpec, ctl: TrainerControls, raw_args: dict | None = None) -> str:
    """``call_tool`` for a spec in hand (a user knob's ``set_<name>`` is not in the registry)."""
    name = spec.name
    raw_args = raw_args if raw_args is not None else {}
    try:
        if not isinstance(raw_args, dict):
            raise ToolArgumentError(
                f"{name} takes a JSON object of arguments, got {_short(raw_args)}", "arguments"
            )
        try:
            args = validate_args(spec, raw_args)
        except ValidationError as exc:
            first = exc.errors()[0]["loc"] if exc.errors() else ()
            raise ToolArgumentError(
                _validation_message(spec, ctl, raw_args, exc), str(first[0]) if first else "arguments"
            ) from None
        reply = spec.fn(ctl, args)
    except ToolArgumentError as exc:
        ctl.record_call(name, raw_args, False, str(exc))
        raise
    ctl.record_call(name, raw_args, True, reply)
    return reply


class TrainerTool(BaseTool):
    """A registered tool as a LangChain tool bound to one ``TrainerControls``.

    Input parsing is ours (``call_tool``), so the model gets the same message a Python caller gets.
    """

    controls: Any
    spec: Any
    handle_tool_error: bool = True

    def _parse_input(self, tool_input, tool_call_id):  # noqa: D401 - see class docstring
        return tool_input

    def _to_args_and_kwargs(self, tool_input, tool_call_id):
        # Positional, never spread into keyword arguments: a model-chosen key such as "self" or
        # "run_manager" must reach call_tool (and be rejected there), not collide with _run's parameters.
        return (tool_input,), {}

    def live_bounds(self) -> dict[str, tuple[float, float, float]]:
        """(low, high, current) for each knob-valued argument *now* (absolute bounds within this decision's trust
        region), for constrained decoders that can enforce it. The tool still validates every call."""
        out = {}
        for arg in self.spec.args.model_fields:
            current = self.controls.current(arg) if self.controls.knob(arg) is not None else None
            if current is not None:
                out[arg] = (*self.controls.allowed_range(arg), current)
        return out

    def _run(self, tool_input, run_manager=None) -> str:
        return run_tool(self.spec, self.controls, tool_input)


def as_langchain_tools(ctl: TrainerControls, names: list[str] | None = None) -> list[BaseTool]:
    """The registered tools (or ``names`` of them) as LangChain tools acting on ``ctl``."""
    registry = discover()
    chosen = names or sorted(registry)
    missing = [n for n in chosen if n not in registry]
    if missing:
        raise ValueError(f"unknown tools {missing}; registered: {', '.join(sorted(registry))}")
    return [bind_tool(registry[n], ctl) for n in chosen]


def bind_tool(spec: ToolSpec, ctl: TrainerControls) -> TrainerTool:
    """One tool spec as a LangChain tool acting on ``ctl``."""
    return TrainerTool(
        name=spec.name, description=spec.description, args_schema=spec.args, controls=ctl, spec=spec
    )
