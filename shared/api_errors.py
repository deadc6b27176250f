"""What the standalone API clients' errors (`shared.gemini`, `shared.vertex`) share: how they read.

Each client keeps its own error tree (it stands alone, and the pipeline's adapters map it in one place);
this mixin only gives them one text: `STATUS_CODE STATUS: message`, the operation first, the request id last.
"""

from __future__ import annotations

__all__ = ["ApiErrorText"]


class ApiErrorText:
    status_code: int | None
    status: str | None
    message: str
    operation: str | None
    request_id: str | None
    retry_after: float | None

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status_code, self.status) if p is not None)
        text = f"{head}: {self.message}" if head else self.message
        if self.operation:
            text = f"{self.operation}: {text}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status_code={self.status_code!r}, status={self.status!r}, "
                f"message={self.message!r}, request_id={self.request_id!r}, retry_after={self.retry_after!r})")
