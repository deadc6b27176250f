"""Ending a job: the terminal state, then its one completion event, then cleanup.

The terminal state and the event id are saved together before anything is published (an outbox): if the
worker dies before publishing, the job stays due and the poller publishes the event. A worker that dies
after publishing but before recording it makes the poller publish it again, with the same `event_id`.
"""

from __future__ import annotations

import uuid

from shared.domain.events import completion_event_for
from shared.domain.jobs import ErrorInfo, Job, JobState
from shared.domain.paths import JobPaths
from shared.errors import TransientError
from shared.logging import get_logger
from shared.services.context import Context
from shared.services.leasing import save

__all__ = ["end_job", "publish_completion"]

log = get_logger(__name__)


def end_job(ctx: Context, job: Job, state: JobState, *, error: ErrorInfo | None = None) -> Job:
    """Move `job` (held under lease) to a terminal state and announce it. Idempotent."""
    if not job.terminal:
        now = ctx.clock()
        if error is not None:
            job.error = ErrorInfo(code=error.code, message=error.message, at=now)
        job.event_id = job.event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"completion:{job.job_id}"))
        job.refresh_counts()
        job.move_to(state, now)
        save(ctx, job)
        log.info("job ended", job_id=job.job_id, state=job.state.value, counts=job.counts.model_dump())
    return publish_completion(ctx, job)


def publish_completion(ctx: Context, job: Job) -> Job:
    """Drop an ended job's staging, then publish its completion event, unless it was published.

    Staging goes first (nothing reads it once the job has ended): a worker that dies half way leaves the
    job due, and the next one finishes the cleanup before it publishes.
    """
    if not job.terminal or job.event_published_at is not None:
        return job
    settings = ctx.settings
    if not settings.keep_staging:
        _drop_staging(ctx, job)
    event = completion_event_for(job, settings.success_rate_alert_threshold)
    if event.low_success_rate:
        log.warning(
            f"job {job.job_id} success rate {job.success_rate}% is under {settings.success_rate_alert_threshold}%",
            job_id=job.job_id, success_rate=job.success_rate, counts=job.counts.model_dump(),
        )
    message_id = ctx.publisher.publish(settings.events_topic, event.data(), event.attributes())
    job.event_published_at = ctx.clock()
    job.next_poll_at = None
    save(ctx, job, last=True)
    log.info("completion event published", job_id=job.job_id, status=event.status, message_id=message_id)
    return job


def _drop_staging(ctx: Context, job: Job) -> None:
    """Delete the job's staging files. A transient error propagates (the job stays due, a retry finishes
    the cleanup); any other is logged and left to the bucket's lifecycle rule, never blocking the event."""
    staging = JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix).staging
    try:
        for blob in ctx.blobs.list(staging):
            ctx.blobs.delete(blob.uri)
    except TransientError:
        raise
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("could not delete staging files", job_id=job.job_id, staging=staging, exc_info=True)
