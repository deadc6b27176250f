"""What the functions share at the edge: reading triggers, and turning errors into transport answers.

An event function that raises is retried (Eventarc / Pub/Sub redeliver); one that returns is done. So:
`TransientError` and unexpected errors raise; `PermanentError` and malformed (poison) events are logged
and acknowledged, never retried forever.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.bootstrap import setup_logging
from shared.domain.jobs import SourceObject
from shared.errors import PermanentError, TransientError
from shared.logging import bind, get_logger, trace_from_header

__all__ = ["PoisonEvent", "complete_request", "handle_event", "pubsub_payload", "stage_request", "storage_object"]

log = get_logger(__name__)
T = TypeVar("T")


class PoisonEvent(PermanentError):
    """An event that no retry can make readable."""

    code = "POISON_EVENT"


def storage_object(data: Any) -> SourceObject:
    """The `google.cloud.storage.object.v1.finalized` payload (a Cloud Storage object resource)."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise PoisonEvent(f"storage event data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonEvent(f"storage event data is a {type(data).__name__}, not an object resource")
    try:
        return SourceObject(
            bucket=data["bucket"],
            name=data["name"],
            generation=str(data["generation"]),
            size=int(data.get("size") or 0),
            content_type=data.get("contentType"),
            content_encoding=data.get("contentEncoding"),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise PoisonEvent(f"storage event lacks a valid object resource ({type(exc).__name__}: {exc})") from None


def pubsub_payload(data: Any) -> dict[str, Any]:
    """The JSON object inside a `google.cloud.pubsub.topic.v1.messagePublished` event's message."""
    try:
        encoded = data["message"]["data"]
        payload = json.loads(base64.b64decode(encoded, validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise PoisonEvent(f"Pub/Sub event carries no JSON message ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise PoisonEvent("Pub/Sub message is not a JSON object")
    return payload


def stage_request(payload: dict[str, Any]) -> tuple[str | None, SourceObject | None]:
    """A stage message: a job to stage on, or an object to submit (`shared.services.messages`)."""
    if "source" in payload:
        try:
            return None, SourceObject.model_validate(payload["source"])
        except ValidationError as exc:
            raise PoisonEvent(f"stage message has no valid source ({exc.error_count()} errors)") from None
    job_id = payload.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise PoisonEvent("stage message has neither job_id nor source")
    return job_id, None


def complete_request(payload: dict[str, Any]) -> tuple[str, int | None]:
    """A complete message: a job, and the shard to write (none: finish the job)."""
    job_id, shard = payload.get("job_id"), payload.get("shard")
    if not isinstance(job_id, str) or not job_id:
        raise PoisonEvent("complete message has no job_id")
    if shard is not None and (isinstance(shard, bool) or not isinstance(shard, int) or shard < 0):
        raise PoisonEvent(f"complete message has an invalid shard {shard!r}")
    return job_id, shard


def handle_event(event_id: str | None, trace_header: str | None, work: Callable[[], T]) -> T | None:
    """Run `work` for one event; raise only for what a retry can fix."""
    setup_logging()
    with bind(event_id=event_id, trace=trace_from_header(trace_header)):
        try:
            return work()
        except TransientError as exc:
            log.warning(f"will retry: {exc}", code=exc.code)
            raise
        except PermanentError as exc:
            log.error(f"dropped: {exc}", code=exc.code)
            return None
        except Exception:
            log.exception("unexpected error; the event will be retried")
            raise
