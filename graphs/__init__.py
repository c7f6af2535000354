"""The LangGraph controller graph and the per-epoch runner."""

from .graph import AgentConfig, build_graph
from .state import AgentState

__all__ = ["AgentConfig", "AgentState", "build_graph"]
