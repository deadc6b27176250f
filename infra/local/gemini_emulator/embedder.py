"""Texts -> gemini-embedding-001-shaped vectors: encoder (loaded in the background), lift, LRU cache.

Guarantees: the same text always gives the same 3072-d unit vector in a process (cached by a
blake2b hash of the text, bounded LRU, unless the encoder is cheaper to rerun than to cache); the encoder
loads once, on a background thread started at boot, so the HTTP server answers health checks while it
loads; callers that need vectors wait. An encoder that already makes 3072-d vectors is served unlifted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .encoder import TextEncoder
from .lift import DimensionLift
from .schema import MAX_DIMS as TARGET_DIMS  # gemini-embedding-001's dimensions
from .schema import EmbedItem
from .wire import ApiError

__all__ = ["Embedder", "TARGET_DIMS"]

log = logging.getLogger("gemini_emulator")


class Embedder:
    """Thread-safe; `embed` runs the model once per call for the texts it has not seen."""

    def __init__(self, factory: Callable[[], TextEncoder], cache_entries: int = 20_000) -> None:
        self._factory = factory
        self._cache_entries = cache_entries
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded = threading.Event()
        self._encoder: TextEncoder | None = None
        self._lift: DimensionLift | None = None
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.cache_hits = 0
        self.encoded_texts = 0

    # -- loading -------------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load the encoder on a daemon thread; returns at once."""
        threading.Thread(target=self._load, name="emulator-model-load", daemon=True).start()

    def _load(self) -> None:
        with self._load_lock:
            if self._loaded.is_set():
                return
            started = time.monotonic()
            try:
                encoder = self._factory()
                if encoder.dimensions != TARGET_DIMS:
                    self._lift = DimensionLift(encoder.dimensions, TARGET_DIMS)
                self._encoder = encoder
                self.load_seconds = time.monotonic() - started
                log.info("encoder %s loaded in %.2fs", encoder.name, self.load_seconds)
            except Exception as exc:  # surfaced on every request that needs the model
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("encoder failed to load: %s", self.error)
            finally:
                self._loaded.set()

    @property
    def ready(self) -> bool:
        return self._encoder is not None

    @property
    def name(self) -> str | None:
        return self._encoder.name if self._encoder else None

    @property
    def model_dimensions(self) -> int | None:
        return self._encoder.dimensions if self._encoder else None

    def wait_ready(self, timeout: float = 120.0) -> TextEncoder:
        """The loaded encoder; loads it here if nobody started loading. Raises ApiError 500/503."""
        if not self._loaded.is_set() and not self._load_lock.locked():
            self._load()
        if not self._loaded.wait(timeout):
            raise ApiError(503, f"The embedding model is still loading after {timeout:.0f}s; retry later.")
        if self._encoder is None:
            raise ApiError(500, f"The emulator's embedding model failed to load: {self.error}")
        return self._encoder

    # -- embedding ----------------------------------------------------------------------------
    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def model_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(n, model dims) unit vectors, from the cache where possible."""
        encoder = self.wait_ready()
        if not encoder.cacheable:
            self.encoded_texts += len(texts)
            return encoder.encode(texts)
        keys = [self._key(t) for t in texts]
        out = np.empty((len(texts), encoder.dimensions), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        with self._cache_lock:
            for i, key in enumerate(keys):
                cached = self._cache.get(key)
                if cached is None:
                    missing.setdefault(key, []).append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = cached
                    self.cache_hits += 1
        if missing:
            order = list(missing)
            vectors = encoder.encode([texts[missing[k][0]] for k in order])
            self.encoded_texts += len(order)
            with self._cache_lock:
                for key, vector in zip(order, vectors, strict=True):
                    for i in missing[key]:
                        out[i] = vector
                    if self._cache_entries:
                        self._cache[key] = vector
                        self._cache.move_to_end(key)
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return out

    def embed(self, texts: Sequence[str], dims: int = TARGET_DIMS) -> np.ndarray:
        """(n, dims) float32: the first `dims` of each text's 3072-d unit vector (one model run for the
        uncached texts); rows are unit-norm only when dims == 3072."""
        vectors = self.model_vectors(texts)
        if self._lift is None:  # the encoder's own vectors are 3072-d and unit-norm
            return vectors if dims == TARGET_DIMS else np.ascontiguousarray(vectors[:, :dims])
        return self._lift(vectors, dims)

    def embed_items(
        self,
        items: Sequence[EmbedItem],
        batch_size: int,
        before: Callable[[int], None] | None = None,
        guard: contextlib.AbstractContextManager[object] | None = None,
    ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """Embed `items` in model batches of up to `batch_size`, shortest first (less padding): yields, per
        batch, the items' positions in `items` and their vectors, each cut to its item's `dims`. Lazy: a
        batch is embedded when asked for, after `before(its size)` (which may raise to stop), inside
        `guard` (e.g. a semaphore bounding concurrent model runs)."""
        if not items:
            return
        cost = self.lengths([item.text for item in items])
        order = sorted(range(len(items)), key=cost.__getitem__)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if before is not None:
                before(len(chunk))
            widest = max(items[i].dims for i in chunk)
            with guard if guard is not None else contextlib.nullcontext():
                vectors = self.embed([items[i].text for i in chunk], widest)
            yield chunk, [
                vector if items[i].dims == widest else np.ascontiguousarray(vector[: items[i].dims])
                for i, vector in zip(chunk, vectors, strict=True)
            ]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """The encoder's batching cost of each text (tokens for the ONNX model)."""
        return self.wait_ready().lengths(texts)

    @property
    def cache_size(self) -> int:
        with self._cache_lock:
            return len(self._cache)

    def clear_cache(self) -> int:
        """Forget every cached vector; returns how many there were."""
        with self._cache_lock:
            count = len(self._cache)
            self._cache.clear()
            return count
