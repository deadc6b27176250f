"""The project's Batch API quotas, enforced as the live API enforces them, and the usage behind them.

Limits (env `GEMINI_EMULATOR_QUOTAS`, admin `GET|PUT /_emulator/quotas`; a key left out or null = no limit):

    enqueued_tokens     int, or {"models/NAME": int, "*": int}: tokens of one model's PENDING + RUNNING batches
    concurrent_batches  int: PENDING + RUNNING batches of the project
    file_storage_bytes  int: bytes of all stored files (uploads, uploads under way, responses files)
    file_bytes          int: the largest single uploaded file

Guarantees: a check and its reservation happen under one lock, so concurrent creates or uploads never
overshoot a limit between them. A refusal is Google's 429 RESOURCE_EXHAUSTED with no Retry-After header
(as users report the live API answers) and changes nothing. Responses files the emulator writes are
counted but never refused. Peaks record the highest usage since the last reset.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .wire import ApiError, loads

__all__ = ["QUOTA_KEYS", "Ledger", "QuotaError", "parse_quotas"]

QUOTA_KEYS = ("enqueued_tokens", "concurrent_batches", "file_storage_bytes", "file_bytes")
_EXHAUSTED = "Resource has been exhausted (e.g. check quota)."


class QuotaError(ValueError):
    """A quota configuration that cannot be applied; the message names the key and what was wrong."""


def _limit(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QuotaError(f"{where} must be an integer >= 0 or null, got {value!r}")
    return value


def _model_key(name: str) -> str:
    return name if name == "*" or name.startswith("models/") else f"models/{name}"


def _token_limits(value: Any) -> int | dict[str, int] | None:
    if not isinstance(value, Mapping):
        return _limit(value, "enqueued_tokens")
    out: dict[str, int] = {}
    for model, limit in value.items():
        if not isinstance(model, str) or not model.strip():
            raise QuotaError(f"enqueued_tokens keys must be model names or '*', got {model!r}")
        checked = _limit(limit, f"enqueued_tokens[{model!r}]")
        if checked is not None:
            out[_model_key(model.strip())] = checked
    return out


def parse_quotas(raw: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
    """Validate a quota configuration (a dict or its JSON); the result keeps only the limits that are set."""
    if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
        return {}
    if isinstance(raw, (str, bytes)):
        try:
            raw = loads(raw)
        except ApiError as exc:
            raise QuotaError(f"quotas are not valid JSON: {exc.message}") from exc
    if not isinstance(raw, Mapping):
        raise QuotaError(f"quotas are a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(QUOTA_KEYS))
    if unknown:
        raise QuotaError(f"unknown quota keys {unknown}; known: {list(QUOTA_KEYS)}")
    out: dict[str, Any] = {}
    for key in QUOTA_KEYS:
        if key not in raw:
            continue
        value = _token_limits(raw[key]) if key == "enqueued_tokens" else _limit(raw[key], key)
        if value is not None and value != {}:
            out[key] = value
    return out


class Ledger:
    """Limits and usage: tokens per model and batches in PENDING/RUNNING, bytes of stored files. Thread-safe."""

    def __init__(self, limits: Mapping[str, Any] | str | None = None) -> None:
        self._lock = threading.Lock()
        self._limits = parse_quotas(limits)
        self._tokens: Counter[str] = Counter()
        self._batches = 0
        self._bytes = 0
        self._peak_tokens: Counter[str] = Counter()
        self._peak_total_tokens = 0
        self._peak_batches = 0
        self._peak_bytes = 0
        self._rejections: Counter[str] = Counter()

    # -- configuration -----------------------------------------------------------------------------
    def replace(self, limits: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
        """Install new limits (validated first; the old ones stay on error). Usage is kept."""
        parsed = parse_quotas(limits)
        with self._lock:
            self._limits = parsed
        return self.limits()

    def limits(self) -> dict[str, Any]:
        with self._lock:
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._limits.items()}

    def token_limit(self, model: str) -> int | None:
        """The enqueued-tokens limit of `model`, if any."""
        with self._lock:
            return self._token_limit(model)

    def _token_limit(self, model: str) -> int | None:
        limit = self._limits.get("enqueued_tokens")
        if isinstance(limit, dict):
            return limit.get(model, limit.get("*"))
        return limit

    def _refuse(self, key: str, detail: str) -> ApiError:
        self._rejections[key] += 1
        return ApiError(429, f"{_EXHAUSTED} {detail}")

    # -- batches -----------------------------------------------------------------------------------
    def admit_batch(self, model: str, tokens: int) -> None:
        """Reserve a new batch's place and tokens, or raise the 429 that leaves everything as it was."""
        with self._lock:
            limit = self._limits.get("concurrent_batches")
            if limit is not None and self._batches + 1 > limit:
                raise self._refuse(
                    "concurrent_batches",
                    f"{self._batches} batches are PENDING or RUNNING; at most {limit} may be.",
                )
            token_limit = self._token_limit(model)
            if token_limit is not None and self._tokens[model] + tokens > token_limit:
                raise self._refuse(
                    "enqueued_tokens",
                    f"Enqueued tokens for {model}: {self._tokens[model]} in PENDING and RUNNING batches "
                    f"+ {tokens} in this batch > {token_limit}.",
                )
            self._batches += 1
            self._tokens[model] += tokens
            self._peak_batches = max(self._peak_batches, self._batches)
            self._peak_tokens[model] = max(self._peak_tokens[model], self._tokens[model])
            self._peak_total_tokens = max(self._peak_total_tokens, sum(self._tokens.values()))

    def add_tokens(self, model: str, tokens: int) -> None:
        """Tokens of an admitted batch counted after its create (no limit applied): never refused."""
        with self._lock:
            self._tokens[model] += tokens
            self._peak_tokens[model] = max(self._peak_tokens[model], self._tokens[model])
            self._peak_total_tokens = max(self._peak_total_tokens, sum(self._tokens.values()))

    def release_batch(self, model: str, tokens: int) -> None:
        with self._lock:
            self._batches = max(self._batches - 1, 0)
            self._tokens[model] = max(self._tokens[model] - tokens, 0)
            if not self._tokens[model]:
                del self._tokens[model]

    # -- files ---------------------------------------------------------------------------------------
    def check_file_size(self, size: int) -> None:
        """The 429 for a single file over `file_bytes`."""
        with self._lock:
            limit = self._limits.get("file_bytes")
            if limit is not None and size > limit:
                raise self._refuse(
                    "file_bytes", f"The file has {size} bytes or more; at most {limit} are allowed."
                )

    def admit_bytes(self, size: int) -> None:
        """Reserve `size` bytes of storage, or raise the 429 that reserves nothing."""
        with self._lock:
            limit = self._limits.get("file_storage_bytes")
            if limit is not None and self._bytes + size > limit:
                raise self._refuse(
                    "file_storage_bytes",
                    f"Files API storage: {self._bytes} bytes stored + {size} > {limit}.",
                )
            self._add_bytes(size)

    def add_bytes(self, size: int) -> None:
        """Count bytes the service itself wrote (responses files): never refused."""
        with self._lock:
            self._add_bytes(size)

    def _add_bytes(self, size: int) -> None:
        self._bytes += size
        self._peak_bytes = max(self._peak_bytes, self._bytes)

    def release_bytes(self, size: int) -> None:
        with self._lock:
            self._bytes = max(self._bytes - size, 0)

    # -- reporting -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Usage, peaks and refusals, as GET /_emulator/stats reports them."""
        with self._lock:
            return {
                "enqueuedTokens": {"total": sum(self._tokens.values()), "byModel": dict(self._tokens)},
                "peakEnqueuedTokens": {"total": self._peak_total_tokens, "byModel": dict(self._peak_tokens)},
                "activeBatches": self._batches,
                "peakActiveBatches": self._peak_batches,
                "fileStorageBytes": self._bytes,
                "peakFileStorageBytes": self._peak_bytes,
                "quotaRejections": {"total": sum(self._rejections.values()), **self._rejections},
            }

    def reset_peaks(self) -> None:
        """Peaks start again from the current usage."""
        with self._lock:
            self._peak_tokens = Counter(self._tokens)
            self._peak_total_tokens = sum(self._tokens.values())
            self._peak_batches = self._batches
            self._peak_bytes = self._bytes

    def clear(self) -> None:
        """No usage, no peaks, no refusals (the limits stay)."""
        with self._lock:
            self._tokens.clear()
            self._batches = self._bytes = 0
            self._rejections.clear()
        self.reset_peaks()
