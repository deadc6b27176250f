"""Bounded retries: exponential backoff with full jitter, honouring the server's Retry-After.

What is retried, per call (the client passes the predicate):

- Reads (get, list, download, embedContent, batchEmbedContents) and cancel/delete are idempotent:
  every `RetryableGeminiError` is retried.
- Creating a batch is NOT idempotent: the same request twice makes two batches. It is retried only when
  the request provably did not take effect: HTTP 429 (the quota check rejects it before anything is
  created) and connection failures before any byte was sent (`reached_server is False`). A 5xx, a read
  timeout or a dropped connection after sending may have created the batch, so the error is raised and
  the caller recovers by the batch's display name (`GeminiBatchProvider.find_batch`).

The wait before retry n (0-based) is the server's Retry-After (header, or the `RetryInfo.retryDelay`
of the error body) capped at `max_retry_after`; otherwise a uniform draw in
[0, min(max_delay, base_delay * 2**n)] ("full jitter"). `sleep` and `rand` are injectable for tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from shared.gemini.errors import GeminiError, RetryableGeminiError

__all__ = [
    "RETRYABLE_STATUS_CODES",
    "RetryPolicy",
    "backoff_delay",
    "is_retryable",
    "may_retry_create",
    "may_retry_create_unsent",
    "parse_duration",
    "parse_retry_after",
    "retry_call",
]

T = TypeVar("T")

#: HTTP statuses worth another try: timeouts, rate limits and the server's passing troubles.
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})

DEFAULT_BASE_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0
#: A server asking for longer than this gets this; a caller that must wait longer can retry later.
DEFAULT_MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    def delay(self, retry: int, error: GeminiError, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry number `retry` (0-based) after `error`."""
        if error.retry_after is not None:
            return max(0.0, min(error.retry_after, self.max_retry_after))
        return backoff_delay(retry, base=self.base_delay, cap=self.max_delay, rand=rand)


def backoff_delay(retry: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
    return rand() * min(cap, base * (2 ** min(retry, 32)))


def is_retryable(error: GeminiError) -> bool:
    return isinstance(error, RetryableGeminiError)


def may_retry_create(error: GeminiError) -> bool:
    """Whether a failed create provably made no batch (see the module docstring)."""
    return isinstance(error, RetryableGeminiError) and (
        error.status_code == 429 or error.reached_server is False
    )


def may_retry_create_unsent(error: GeminiError) -> bool:
    """As `may_retry_create`, but a 429 is the caller's to handle (a capacity ledger waits instead)."""
    return isinstance(error, RetryableGeminiError) and error.reached_server is False


def retry_call(
    call: Callable[[], T],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    retry_if: Callable[[GeminiError], bool] = is_retryable,
    on_retry: Callable[[GeminiError, int, float], None] | None = None,
) -> T:
    """Run `call`; on a `GeminiError` that `retry_if` accepts, wait and run it again, at most
    `policy.max_retries` more times. The last error propagates unchanged."""
    retry = 0
    while True:
        try:
            return call()
        except GeminiError as error:
            if retry >= policy.max_retries or not retry_if(error):
                raise
            wait = policy.delay(retry, error, rand)
            if on_retry is not None:
                on_retry(error, retry, wait)
            sleep(wait)
            retry += 1


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_duration(value: object) -> float | None:
    """Seconds from a protobuf Duration in JSON ("37s", "1.5s"). None when unreadable."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return max(0.0, float(value[:-1]))
    except ValueError:
        return None
