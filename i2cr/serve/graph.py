"""The graph as LangGraph's server loads it (``langgraph.json`` ``graphs``): the compiled i2cr
graph, with the server's image policy installed in the process that runs it (whether or not that
process also serves the custom routes, whose app installs it too)."""

from __future__ import annotations

from i2cr.graph.graph import graph
from i2cr.images import set_policy
from i2cr.serve.config import ServerConfig

set_policy(ServerConfig.from_env().image_policy())

__all__ = ["graph"]
