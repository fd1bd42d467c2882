"""The I2CR LangGraph: typed state, the settings (context schema), nodes and routes."""

from .context import Context
from .graph import build_graph, compile_graph, graph
from .state import InputState, OutputState, State

__all__ = ["Context", "InputState", "OutputState", "State", "build_graph", "compile_graph", "graph"]
