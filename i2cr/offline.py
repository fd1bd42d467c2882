"""Keep model loading offline unless the user allows downloads.

huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import; setting the variable later changes
nothing. This context manager sets both the variable and the library's constant, so a model that
is not on disk (or in the Hugging Face cache) fails at once with a clear error instead of retrying
the network for a minute.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    old_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # the constants of any huggingface_hub version, set through the module's namespace
    hub_constants: ModuleType | None
    try:
        hub_constants = importlib.import_module("huggingface_hub.constants")
    except ImportError:  # pragma: no cover - huggingface_hub comes with sentence-transformers
        hub_constants = None
    old_const = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        vars(hub_constants)["HF_HUB_OFFLINE"] = True
    try:
        yield
    finally:
        if hub_constants is not None:
            vars(hub_constants)["HF_HUB_OFFLINE"] = old_const
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
