"""Build and compile the I2CR graph: [retrieve ->] prepare -> TES -> ICR -> IAV -> VIF -> ...
[-> review (hybrid TES)] -> final."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from i2cr.graph.context import Context
from i2cr.graph.final import final
from i2cr.graph.iav import iav
from i2cr.graph.icr import icr
from i2cr.graph.prepare import prepare
from i2cr.graph.retrieve import retrieve
from i2cr.graph.review import review
from i2cr.graph.routes import after_iav, after_icr, after_prepare, after_vif, from_start
from i2cr.graph.state import InputState, OutputState, State
from i2cr.graph.tes import tes
from i2cr.graph.vif import vif


def build_graph(context_schema: type[Context] = Context,
                ) -> StateGraph[State, Context, InputState, OutputState]:
    """The graph; ``context_schema`` is :class:`Context` or a subclass (the served graph's
    :class:`i2cr.serve.graph.ServedContext`)."""
    g = StateGraph(State, context_schema=context_schema, input_schema=InputState,
                   output_schema=OutputState)
    g.add_node("retrieve", retrieve)
    g.add_node("prepare", prepare)
    g.add_node("tes", tes)
    g.add_node("icr", icr)
    g.add_node("iav", iav)
    g.add_node("vif", vif)
    g.add_node("review", review)
    g.add_node("final", final)
    g.add_conditional_edges(START, from_start, ["retrieve", "prepare"])
    g.add_edge("retrieve", "prepare")
    g.add_conditional_edges("prepare", after_prepare, ["tes", "final"])
    g.add_edge("tes", "icr")
    g.add_conditional_edges("icr", after_icr, ["tes", "iav", "review", "final"])
    g.add_conditional_edges("iav", after_iav, ["vif", "review", "final"])
    g.add_conditional_edges("vif", after_vif, ["tes", "vif", "review", "final"])
    g.add_edge("review", "final")
    g.add_edge("final", END)
    return g


def compile_graph(checkpointer: Checkpointer = None, *, context_schema: type[Context] = Context,
                  **kwargs: Any) -> CompiledStateGraph[State, Context, InputState, OutputState]:
    return build_graph(context_schema).compile(checkpointer=checkpointer, name="i2cr", **kwargs)


graph = compile_graph()
