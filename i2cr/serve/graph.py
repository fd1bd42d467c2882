"""The graph the server serves (``langgraph.json`` ``graphs``): the compiled I2CR graph whose
runs share the server process's models.

LangGraph builds each run's settings from the run's ``context`` (a dict) as
``context_schema(**context)``; with :class:`~i2cr.graph.context.Context` that was a new run with its
own, empty :class:`~i2cr.graph.resources.Resources`, so every API run loaded its models anew.
:class:`ServedContext` gives such settings the process's one Resources instead
(:func:`i2cr.serve.config.process_resources`); the CLI, ``link`` and the eval runner keep one per
run (they use :mod:`i2cr.graph.graph`).
"""

from __future__ import annotations

from i2cr.graph.context import Context
from i2cr.graph.graph import compile_graph
from i2cr.serve.config import process_resources


class ServedContext(Context):
    """A served run's settings (the same fields as :class:`Context`): given no ``resources``,
    they take the server process's."""

    def __post_init__(self) -> None:
        if self.resources is None:
            object.__setattr__(self, "resources", process_resources())
        super().__post_init__()


graph = compile_graph(context_schema=ServedContext)
