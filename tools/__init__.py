"""Typed tools over the paused trainer. Mutating tools stage a decision; ``TrainerControls.commit()`` applies it."""

from .controls import Bounds, CommitResult, StagedChange, TrainerControls
from .errors import ToolArgumentError
from .registry import (
    REGISTRY,
    ToolSpec,
    as_langchain_tools,
    call_tool,
    discover,
    load_tools_module,
    register_tool,
)

__all__ = [
    "REGISTRY",
    "Bounds",
    "CommitResult",
    "StagedChange",
    "ToolArgumentError",
    "ToolSpec",
    "TrainerControls",
    "as_langchain_tools",
    "call_tool",
    "discover",
    "load_tools_module",
    "register_tool",
]
