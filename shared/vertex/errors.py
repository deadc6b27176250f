"""The Vertex AI client's errors, one tree of its own (the client stands alone; the pipeline's adapter,
`shared.adapters.vertex_provider`, maps it into the pipeline's tree in one place)::

    VertexError                        status_code, status, message, request_id, retry_after, reached_server
     +-- RetryableVertexError          HTTP 408, 429, 500, 502, 503, 504, timeouts, connection errors
     +-- PermanentVertexError          any other HTTP error, an answer the client cannot read
          +-- VertexAuthError          HTTP 401/403, no Application Default Credentials, a refused refresh
          +-- VertexNotFoundError      HTTP 404
          +-- InvalidArgumentError     (also ValueError) rejected before any request

Guarantee: no message, `str()` or `repr()` of these errors contains an access token. The client never puts
one in a message, and every message is scrubbed of `Bearer <token>` and `access_token=` anyway.
"""

from __future__ import annotations

import re

from shared.api_errors import ApiErrorText

__all__ = [
    "InvalidArgumentError",
    "PermanentVertexError",
    "RetryableVertexError",
    "VertexAuthError",
    "VertexError",
    "VertexNotFoundError",
    "redact",
]

_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN_PARAM = re.compile(r"(?i)(access_token[\"']?\s*[=:]\s*[\"']?)[^&\s\"',}]+")
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """`text` without bearer tokens or `access_token` values."""
    return _TOKEN_PARAM.sub(lambda m: m.group(1) + REDACTED, _BEARER.sub(lambda m: m.group(1) + REDACTED, text))


class VertexError(ApiErrorText, Exception):
    """An error of Vertex AI or of the way to it.

    `status_code` the HTTP status (None without an answer); `status` Google's status name
    (`RESOURCE_EXHAUSTED`); `retry_after` the seconds the server asked to wait; `reached_server` True when
    the server answered, False when the request provably never left, None when nobody can tell.
    """

    def __init__(self, message: str, *, status_code: int | None = None, status: str | None = None,
                 request_id: str | None = None, retry_after: float | None = None, operation: str | None = None,
                 reached_server: bool | None = None):
        self.message = redact(message)
        super().__init__(self.message)
        self.status_code = status_code
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.operation = operation
        self.reached_server = reached_server


class RetryableVertexError(VertexError):
    pass


class PermanentVertexError(VertexError):
    pass


class VertexAuthError(PermanentVertexError):
    pass


class VertexNotFoundError(PermanentVertexError):
    pass


class InvalidArgumentError(PermanentVertexError, ValueError):
    """An argument refused before anything was sent; the message names it."""

    def __init__(self, message: str):
        super().__init__(message, status="INVALID_ARGUMENT")
