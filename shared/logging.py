"""Structured logs in Cloud Logging's JSON format, one object per line on stdout.

Every line carries `severity`, `message`, `time`, and, when known, `job_id` and the request's trace
(`logging.googleapis.com/trace`), so one job's story can be read across functions. Known secrets are
replaced by `[REDACTED]` before a line is written, whatever logged them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

__all__ = ["bind", "configure_logging", "get_logger", "register_secret", "trace_from_header"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039 - never mutated
_secrets: set[str] = set()
_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL", "ERROR": "ERROR", "INFO": "INFO", "DEBUG": "DEBUG"}


def register_secret(value: str | None) -> None:
    """Never print `value`: every log line is scrubbed of it."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


class CloudLoggingFormatter(logging.Formatter):
    def __init__(self, project: str | None = None):
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        context = dict(_context.get())
        trace = context.pop("trace", None)
        if trace and self.project:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}"
        entry.update(context)
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class _FieldsAdapter(logging.LoggerAdapter):
    """`log.info("message", job_id=..., count=...)`: keyword arguments become JSON fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        reserved = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in reserved}
        kwargs["extra"] = {**kwargs.get("extra", {}), "fields": fields}
        return msg, kwargs


def get_logger(name: str) -> _FieldsAdapter:
    return _FieldsAdapter(logging.getLogger(name), {})


def configure_logging(level: str = "INFO", project: str | None = None) -> None:
    """Send the root logger's records to stdout as Cloud Logging JSON. Safe to call more than once."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cloud_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(project))
    handler._cloud_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("urllib3", "httpx", "httpcore", "google.auth", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields (job_id, trace, ...) to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def trace_from_header(header: str | None) -> str | None:
    """The trace id of an `X-Cloud-Trace-Context: TRACE/SPAN;o=1` or `traceparent` header."""
    if not header:
        return None
    if header.count("-") == 3:  # W3C traceparent: version-trace-span-flags
        return header.split("-")[1]
    return header.split("/")[0] or None
