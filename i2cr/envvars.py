"""The ``I2CR_*`` environment variables i2cr reads, named once here, and a warning naming any
other one (a misspelt ``I2CR_ICR_TRESHOLD`` was ignored without a word).

Every setting of :class:`~i2cr.graph.context.Context` is read as ``I2CR_<SETTING>``
(:func:`setting_var`); the other names are the constants below, which their readers import.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from dataclasses import fields

PREFIX = "I2CR_"
LLM_API_KEY = "I2CR_LLM_API_KEY"  # the key an openai-compat server wants (i2cr.llm)
LLM_THREADS = "I2CR_LLM_THREADS"  # llama.cpp's threads (i2cr.llm)
API_KEYS = "I2CR_API_KEYS"  # the served linker's keys (i2cr.serve.config)
MAX_BODY_BYTES = "I2CR_MAX_BODY_BYTES"  # (i2cr.serve.config)
MAX_BATCH = "I2CR_MAX_BATCH"  # (i2cr.serve.config)
BODY_TIMEOUT_S = "I2CR_BODY_TIMEOUT_S"  # (i2cr.serve.config)
LOAD_API_KEY = "I2CR_API_KEY"  # the key python -m i2cr.serve.load sends (i2cr.serve.load)
WHEEL_CACHE = "I2CR_WHEEL_CACHE"  # scripts/setup.sh's wheel folder
OTHERS = (LLM_API_KEY, LLM_THREADS, API_KEYS, MAX_BODY_BYTES, MAX_BATCH, BODY_TIMEOUT_S,
          LOAD_API_KEY, WHEEL_CACHE)
SHOWN = 10  # unknown names listed in the warning, at most


def setting_var(name: str) -> str:
    """The environment variable of the setting ``name``: ``I2CR_<NAME>``."""
    return PREFIX + name.upper()


def known() -> set[str]:
    """Every ``I2CR_*`` name i2cr reads."""
    from .graph.context import Context  # (the settings: imported when asked, not at import)

    return {setting_var(f.name) for f in fields(Context)
            if f.metadata.get("env", True) is not False} | set(OTHERS)


def unknown(env: Mapping[str, str]) -> list[str]:
    """The ``I2CR_*`` names in ``env`` that i2cr does not read, sorted."""
    names = known()
    return sorted(k for k in env if k.startswith(PREFIX) and k not in names)


def warning(env: Mapping[str, str]) -> str | None:
    """One line naming the unknown ``I2CR_*`` names of ``env`` (each with the known name it is
    closest to, if any), or None when there are none."""
    bad = unknown(env)
    if not bad:
        return None
    names = sorted(n[len(PREFIX):] for n in known())  # compared without the common prefix
    shown = []
    for k in bad[:SHOWN]:
        close = difflib.get_close_matches(k[len(PREFIX):], names, n=1, cutoff=0.8)
        shown.append(f"{k} (did you mean {PREFIX}{close[0]}?)" if close else k)
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return (f"unknown environment variable(s) {', '.join(shown)}{more}: ignored (i2cr reads "
            "I2CR_<SETTING> for each setting of --set, and a few others named in the README)")


_warned = False


def warn_unknown(env: Mapping[str, str]) -> None:
    """Print :func:`warning` on stderr, once per process."""
    global _warned
    line = None if _warned else warning(env)
    if line:
        _warned = True
        print(f"i2cr: warning: {line}", file=sys.stderr, flush=True)
