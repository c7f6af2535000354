"""The one error type a tool raises for bad arguments."""

from __future__ import annotations

from langchain_core.tools import ToolException


class ToolArgumentError(ToolException, ValueError):
    """A tool call was rejected: the message names the argument, the allowed range and the current value.

    Nothing was staged or changed. Through LangChain/LangGraph the same message comes back to the model
    as an error ToolMessage, so it can correct the call.
    """

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
