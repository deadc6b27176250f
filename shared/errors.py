"""One exception tree for the whole pipeline. The functions map it to "retry" or "acknowledge".

    PipelineError
     +-- TransientError      a retry can fix it: provider 429/5xx/timeouts, a lease held elsewhere,
     |                       a store that is briefly unavailable. Functions raise it (redelivery).
     +-- PermanentError      a retry cannot fix it. Functions record it on the job and return.
          +-- InputError     the user's file or options are wrong (the message says how)
          +-- NotFound       a job, batch or object that does not exist

The Gemini client's errors (`shared.gemini.errors`) subclass TransientError and PermanentError, so the
use cases catch one tree. Messages never include credentials.
"""

from __future__ import annotations

__all__ = ["InputError", "NotFound", "PermanentError", "PipelineError", "TransientError"]


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


class PermanentError(PipelineError):
    code = "FAILED_PRECONDITION"


class InputError(PermanentError):
    code = "INVALID_INPUT"


class NotFound(PermanentError):
    code = "NOT_FOUND"
