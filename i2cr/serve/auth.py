"""LangGraph custom auth for the served graph (``langgraph.json`` ``auth.path``).

``authenticate`` lets a request through only with one of ``I2CR_API_KEYS`` (the same check as the
custom routes, :func:`i2cr.serve.keys.verify`); without keys configured every caller is
``anonymous``. The resource handlers hold runs and assistants to what the server allows: a run's
``context`` may change only the run settings (:mod:`i2cr.serve.config`), with valid values, and
its input is checked as ``/link`` checks a mention (:mod:`i2cr.serve.inputs`: fields, candidates,
the image rules) and must be in the graph's own input form; a cron's run is checked when the
cron is created; anything else is a 400 before the run is created.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

from langgraph_sdk import Auth

from i2cr.data import DataError
from i2cr.serve.config import BadRequest, ServerConfig
from i2cr.serve.inputs import check_graph_input, mention_from
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


def check_run_request(context: Any, inp: Any, *, resume: bool = False) -> None:
    """:class:`BadRequest` for a run the server does not take: a context that changes what a
    request may not, or a setting's bad value; an input ``/link`` would refuse (missing fields,
    candidates, an image against the server's rules). ``resume``: no input is expected (an
    assistant's settings)."""
    settings = server_config().run_settings(context)
    if inp is None and not resume:  # the graph never pauses: a run without input has nothing to do
        raise BadRequest("input: a run needs a mention (the graph never pauses, so there is "
                         "nothing to resume)")
    if inp is not None:
        try:
            check_graph_input(inp, "input")
            mention_from(inp, "input", kb=bool(settings.kb))
        except DataError as e:
            raise BadRequest(str(e)) from None


@auth.on.threads.create_run
async def on_run(ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate) -> None:
    kwargs: dict[str, Any] = dict(value.get("kwargs") or {})
    await _check(kwargs.get("context"), kwargs.get("input"))


@auth.on.crons.create
async def on_cron(ctx: Auth.types.AuthContext, value: Auth.types.CronsCreate) -> None:
    payload: dict[str, Any] = dict(value.get("payload") or {})
    await _check(payload.get("context"), payload.get("input"))


@auth.on.assistants.create
async def on_assistant_create(ctx: Auth.types.AuthContext,
                              value: Auth.types.AssistantsCreate) -> None:
    await _check(value.get("context"), None, resume=True)


@auth.on.assistants.update
async def on_assistant_update(ctx: Auth.types.AuthContext,
                              value: Auth.types.AssistantsUpdate) -> None:
    await _check(value.get("context"), None, resume=True)


async def _check(context: Any, inp: Any, *, resume: bool = False) -> None:
    try:  # in a worker thread: checking an image URL resolves its host
        await asyncio.to_thread(check_run_request, context, inp, resume=resume)
    except BadRequest as e:
        raise Auth.exceptions.HTTPException(status_code=e.status, detail=str(e)) from None
