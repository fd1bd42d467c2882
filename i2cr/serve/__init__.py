"""Serving the linker on LangGraph's own server (``langgraph dev`` / ``langgraph build``).

``langgraph.json`` at the repository root serves the compiled graph (settings per run as
``context``), mounts :mod:`i2cr.serve.app` (``POST /link``, ``GET /health``, the playground at
``/``) through ``http.app`` and :mod:`i2cr.serve.auth` (API keys from ``I2CR_API_KEYS``) through
``auth.path``. :mod:`i2cr.serve.config` holds what the server fixes and what a run may change;
:mod:`i2cr.serve.load` is the load benchmark.
"""
