"""LangGraph custom auth for the served graph (``langgraph.json`` ``auth.path``).

``authenticate`` lets a request through only with one of ``I2CR_API_KEYS`` (the same check as the
custom routes, :func:`i2cr.serve.keys.verify`); without keys configured every caller is
``anonymous``. The resource handlers hold runs and assistants to what the server allows: a run's
``context`` may change only the run settings (:mod:`i2cr.serve.config`) and its image must be an
http(s) or data: URL; anything else is a 400 before the run is created.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from langgraph_sdk import Auth

from i2cr.images import ImageError, check_ref
from i2cr.serve.config import BadRequest, ServerConfig, check_image_ref, check_overrides
from i2cr.serve.keys import UNAUTHORIZED, verify

auth = Auth()


@lru_cache(maxsize=1)
def server_config() -> ServerConfig:
    """The server's configuration, read once from its environment."""
    return ServerConfig.from_env()


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes]) -> Auth.types.MinimalUserDict:
    who = verify(headers, server_config().api_keys)
    if who is None:
        raise Auth.exceptions.HTTPException(status_code=401, detail=UNAUTHORIZED)
    return {"identity": who, "is_authenticated": who != "anonymous"}


def check_run_request(context: Any, inp: Any) -> None:
    """:class:`BadRequest` for a run the server does not take (see the module docstring)."""
    if context is not None:
        check_overrides(context, server_config().settings)
    if isinstance(inp, dict):
        ref = inp.get("image")
        check_image_ref(ref, "input.image")
        if isinstance(ref, str) and ref and not ref.startswith(("http://", "https://", "data:")):
            try:  # a local path: only under the server's image root (URLs: checked when fetched)
                check_ref(ref, server_config().image_policy())
            except ImageError as e:
                raise BadRequest(f"input.image: {e.reason}") from None


@auth.on.threads.create_run
async def on_run(ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate) -> None:
    kwargs: dict[str, Any] = dict(value.get("kwargs") or {})
    _check(kwargs.get("context"), kwargs.get("input"))


@auth.on.assistants.create
async def on_assistant_create(ctx: Auth.types.AuthContext,
                              value: Auth.types.AssistantsCreate) -> None:
    _check(value.get("context"), None)


@auth.on.assistants.update
async def on_assistant_update(ctx: Auth.types.AuthContext,
                              value: Auth.types.AssistantsUpdate) -> None:
    _check(value.get("context"), None)


def _check(context: Any, inp: Any) -> None:
    try:
        check_run_request(context, inp)
    except BadRequest as e:
        raise Auth.exceptions.HTTPException(status_code=e.status, detail=str(e)) from None
