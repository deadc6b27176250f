"""One exception tree for the whole pipeline. The functions map it to "retry" or "acknowledge".

    PipelineError
     +-- TransientError      a retry can fix it: provider 429/5xx/timeouts, a lease held elsewhere,
     |    |                  a store that is briefly unavailable. Functions raise it (redelivery).
     |    +-- CapacityExhausted   the provider refused a create or upload for a quota; nothing was made
     +-- PermanentError      a retry cannot fix it. Functions record it on the job and return.
          +-- InputError     the user's file or options are wrong (the message says how)
          +-- NotFound       a job, batch or object that does not exist

Each adapter maps its vendor's errors into this tree in one place, for every method (the Gemini client
keeps a tree of its own; `shared.adapters.gemini_provider` maps it). Messages never include credentials.
"""

from __future__ import annotations

__all__ = ["CapacityExhausted", "InputError", "NotFound", "PermanentError", "PipelineError", "TransientError"]


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class TransientError(PipelineError):
    code = "UNAVAILABLE"


class CapacityExhausted(TransientError):
    """A quota of the provider is used up (HTTP 429 RESOURCE_EXHAUSTED at create or upload): wait for
    capacity to free. Not a failure of the job, and not worth an immediate retry. `retry_after`: the wait
    the provider asked for, if it named one (a rate limit rather than a full quota)."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(PipelineError):
    code = "FAILED_PRECONDITION"


class InputError(PermanentError):
    code = "INVALID_INPUT"


class NotFound(PermanentError):
    code = "NOT_FOUND"
