"""The Gemini client's errors, one tree of its own (the client stands alone; the pipeline's adapter,
`shared.adapters.gemini_provider`, maps it into the pipeline's tree in one place)::

    GeminiError                           status_code, status, message, request_id, retry_after
     +-- RetryableGeminiError             HTTP 408, 429, 500, 502, 503, 504, timeouts, connection errors
     |    +-- AwaitTimeoutError           await_completion stopped waiting; the batch itself runs on
     +-- PermanentGeminiError             any other HTTP error, an answer the client cannot read
          +-- InvalidArgumentError        (also ValueError) rejected before any request
          +-- GeminiNotFoundError         HTTP 404
          +-- BatchNotCompleteError       results asked of a batch that has not SUCCEEDED

Guarantee: no message, `str()` or `repr()` of these errors contains an API key. The client scrubs its
own key from every text it puts in an error, and every error scrubs `key=...` query parameters, so a URL
that carried a key cannot leak one either.
"""

from __future__ import annotations

import re
from typing import Any

from shared.api_errors import ApiErrorText

__all__ = [
    "AwaitTimeoutError",
    "BatchNotCompleteError",
    "GeminiError",
    "GeminiNotFoundError",
    "InvalidArgumentError",
    "PermanentGeminiError",
    "RetryableGeminiError",
    "redact",
]

_KEY_PARAM = re.compile(r"(?i)([?&;]key=)[^&#\s\"']+")
REDACTED = "[REDACTED]"


def redact(text: str, *secrets: str | None) -> str:
    """`text` without the given secrets and without the value of any `key=` query parameter."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _KEY_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


class GeminiError(ApiErrorText, Exception):
    """An error of the Gemini API or of the way to it.

    `message` is the API's own message (or the client's, when there was no answer); `status_code` the
    HTTP status; `status` the API's status name (`RESOURCE_EXHAUSTED`); `request_id` the id the answer
    carried, if any, to quote to Google; `retry_after` the seconds the server asked to wait.
    `reached_server` is True when the server answered, False when the request provably never left
    (connection refused or timed out while connecting), None when nobody can tell (read timeout).
    """

    code = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        status: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        details: list[Any] | None = None,
        operation: str | None = None,
        reached_server: bool | None = None,
    ):
        message = redact(message)
        super().__init__(message)
        self.message = message
        if status:
            self.code = status
        self.status_code = status_code
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.details = details or []
        self.operation = redact(operation) if operation else None
        self.reached_server = reached_server


class RetryableGeminiError(GeminiError):
    code = "UNAVAILABLE"


class PermanentGeminiError(GeminiError):
    code = "FAILED_PRECONDITION"


class InvalidArgumentError(PermanentGeminiError, ValueError):
    """An argument the client refuses before sending anything; the message names it."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str):
        super().__init__(message, status="INVALID_ARGUMENT")


class GeminiNotFoundError(PermanentGeminiError):
    code = "NOT_FOUND"


class BatchNotCompleteError(PermanentGeminiError):
    """Results were asked of a batch that has not SUCCEEDED. `batch` is the batch as last seen."""

    def __init__(self, batch: Any):
        self.batch = batch
        super().__init__(
            f"Batch not yet completed (current state: {batch.status})", status="FAILED_PRECONDITION"
        )


class AwaitTimeoutError(RetryableGeminiError):
    """`await_completion` gave up; the batch runs on. `batch` is the batch as last seen."""

    def __init__(self, batch: Any, waited: float):
        self.batch = batch
        self.waited = waited
        super().__init__(
            f"{batch.name} not finished after {waited:.0f}s "
            f"(current state: {batch.status}, {batch.progress_percentage:.1f}% done)",
            status="DEADLINE_EXCEEDED",
        )
