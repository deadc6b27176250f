"""The completion event: the public contract users subscribe to.

Published once per job when it ends, after its manifest is durable. Delivery is at-least-once (a crash
between publishing and recording the publication republishes it): `event_id` is stable per job, so a
subscriber can drop a repeat. Schema: `docs/completion-event.schema.json`; `schema_version` changes only
with a breaking change.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from shared.domain.jobs import Job, JobState

__all__ = ["SCHEMA_VERSION", "CompletionEvent", "completion_event_for", "reuse_summary"]

SCHEMA_VERSION = "1"

EventStatus = Literal["SUCCEEDED", "PARTIALLY_SUCCEEDED", "FAILED", "CANCELLED"]


class EventSource(BaseModel):
    bucket: str
    name: str
    generation: str


class EventOutput(BaseModel):
    manifest: str
    embeddings: list[str]
    parquet: list[str] = []
    errors: str | None = None
    files_truncated: bool | None = None  # more files than an event lists: the manifest lists them all


#: Files an event lists at most (a job of many shards would outgrow a Pub/Sub message otherwise).
EVENT_MAX_FILES = 1000


class EventCounts(BaseModel):
    total: int
    succeeded: int
    failed: int
    input_problems: int = 0
    reused: int = 0


class EventChanges(BaseModel):
    """Ids added, changed and removed against the previous complete generation of the same source."""

    added: int
    changed: int
    removed: int
    unchanged: int
    previous_manifest: str | None = None
    uri: str | None = None  # changes.jsonl: one {"id", "change"} line each


class EventReuse(BaseModel):
    """Passages embedded against those taken from the cache, and what that saved and cost."""

    embedded: int
    reused: int
    reused_tokens: int
    saved_usd: float
    cache_usd: float


class EventError(BaseModel):
    code: str
    message: str


class CompletionEvent(BaseModel):
    schema_version: str = SCHEMA_VERSION
    event_id: str
    job_id: str
    status: EventStatus
    source: EventSource
    output: EventOutput | None = None
    counts: EventCounts
    success_rate: float | None = None
    low_success_rate: bool = False
    model: str | None = None
    dimensions: int | None = None
    task_type: str | None = None
    provider: str | None = None
    waited_seconds: float | None = None  # from staging done (or the first shard staged) to the first capacity
    error: EventError | None = None
    input_errors: str | None = None  # input-errors.jsonl, when records could not be read (even with no output)
    changes: EventChanges | None = None
    reuse: EventReuse | None = None
    completed_at: datetime

    def data(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode()

    def attributes(self) -> dict[str, str]:
        """Pub/Sub attributes, for subscription filters. Values are capped at Pub/Sub's 1,024 bytes."""
        return {
            "job_id": self.job_id,
            "event_id": self.event_id,
            "status": self.status,
            "source_bucket": self.source.bucket,
            "source_name": _cap_utf8(self.source.name, 1024),
            "schema_version": self.schema_version,
        }


def completion_event_for(job: Job, low_success_threshold: float, embeddings: list[str] = (),
                         parquet: list[str] = ()) -> CompletionEvent:
    """The event announcing `job`'s end, listing its output files (the caller reads them from its shards).
    The job must be terminal and carry its `event_id`."""
    if not job.terminal or job.event_id is None:
        raise ValueError(f"job {job.job_id} is {job.state}: only an ended job has a completion event")
    output = None
    if job.output and job.output.manifest:
        truncated = len(embeddings) > EVENT_MAX_FILES
        output = EventOutput(
            manifest=job.output.manifest, embeddings=list(embeddings[:EVENT_MAX_FILES]),
            parquet=list(parquet[:EVENT_MAX_FILES]), errors=job.output.errors, files_truncated=truncated or None,
        )
    options = job.options
    low = (
        job.state in (JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED)
        and job.success_rate is not None and job.success_rate < low_success_threshold
    )
    return CompletionEvent(
        event_id=job.event_id,
        job_id=job.job_id,
        status=job.state.value,
        source=EventSource(bucket=job.source.bucket, name=job.source.name, generation=job.source.generation),
        output=output,
        counts=EventCounts(
            total=job.counts.total, succeeded=job.counts.succeeded,
            failed=job.counts.failed, input_problems=job.counts.input_problems, reused=job.counts.reused,
        ),
        success_rate=job.success_rate,
        low_success_rate=low,
        model=options.model if options else None,
        dimensions=options.output_dimensionality if options else None,
        task_type=options.task_type if options else None,
        provider=options.provider if options else None,
        waited_seconds=waited_seconds(job),
        error=EventError(code=job.error.code, message=job.error.message) if job.error else None,
        input_errors=job.input_problems.uri,
        changes=EventChanges(**job.output.changes.model_dump()) if job.output and job.output.changes else None,
        reuse=EventReuse(**reuse_summary(job)) if job.counts.succeeded else None,
        completed_at=job.completed_at or job.updated_at,
    )


def reuse_summary(job: Job) -> dict:
    """Embedded against reused passages, the tokens and dollars reuse saved, and the cache's own cost."""
    estimate = job.estimate
    return {"embedded": job.counts.succeeded - job.counts.reused, "reused": job.counts.reused,
            "reused_tokens": estimate.reused_tokens, "saved_usd": estimate.saved_usd,
            "cache_usd": estimate.cache_usd}


def waited_seconds(job: Job) -> float | None:
    """How long the job waited for capacity: from when it was staged to its first admission."""
    if job.first_admitted_at is None:
        return None
    ready = job.created_at
    return round(max((job.first_admitted_at - ready).total_seconds(), 0.0), 3)


def _cap_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")
