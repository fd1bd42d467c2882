"""i2cr: multimodal entity linking as a LangGraph agent, following the I2CR method.

>>> from i2cr import link, graph, Context      # doctest: +SKIP
"""

from .data import NIL, Candidate, DataError, Mention, load_labels, load_mentions
from .graph import Context, build_graph, compile_graph, graph
from .linker import link, link_mention

__version__ = "0.1.0"
__all__ = ["Candidate", "Context", "DataError", "Mention", "NIL", "build_graph", "compile_graph",
           "graph", "link", "link_mention", "load_labels", "load_mentions"]
