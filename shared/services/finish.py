"""Ending a job: its files, its terminal state, its one completion event, then cleanup.

- `finish_job` runs once every shard is final (the job is COMPLETING): it joins the input problems into
  `input-errors.jsonl`, writes `errors.jsonl` (every item failed at its last try), then `manifest.json`
  last, as the commit marker, then ends the job. Fixed names: a rerun writes the same files.
- The terminal state and the event id are saved together before anything is published (an outbox): if the
  worker dies before publishing, the job stays due and the poller publishes the event; a worker that dies
  after publishing but before recording it makes the poller publish again, with the same `event_id`.
- After the event, the job's staging files are deleted, within the invocation's time budget; the job
  stays due until they are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson

from shared.domain.events import completion_event_for, reuse_summary
from shared.domain.jobs import ErrorInfo, FileRef, Job, JobOutput, JobState, Shard, ShardState
from shared.domain.paths import JobPaths
from shared.domain.reuse import CachePrices
from shared.logging import get_logger
from shared.services.changes import point_latest, write_index_and_changes
from shared.services.context import Context
from shared.services.leasing import leased, save
from shared.services.output import file_ref
from shared.services.records import JSONL, iter_records, written_keys

__all__ = ["end_job", "final_state", "finalize", "finish_job", "paths_of", "publish_completion"]

log = get_logger(__name__)

MANIFEST_VERSION = "2"
#: Staging objects deleted per invocation at most, before the rest is left to the next one.
_CLEANUP_BATCH = 5000


def paths_of(ctx: Context, job: Job) -> JobPaths:
    return JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix)


def final_state(job: Job) -> JobState:
    """SUCCEEDED when every record was embedded; PARTIALLY_SUCCEEDED when some were not (failed items or
    input problems); FAILED when none was."""
    if job.counts.succeeded == 0:
        return JobState.FAILED
    if job.counts.failed or job.counts.input_problems:
        return JobState.PARTIALLY_SUCCEEDED
    return JobState.SUCCEEDED


def finish_job(ctx: Context, job_id: str) -> str:
    """Write a COMPLETING job's files and end it; returns what was done. Raises `LeaseHeld` when busy."""
    with leased(ctx, job_id) as job:
        if job.terminal:
            publish_completion(ctx, job)
            return "already_ended"
        if job.state != JobState.COMPLETING:
            return "not_ready"
        if job.stopping:
            from shared.services.cancel import stop_held  # cancel ends jobs through this module

            stop_held(ctx, job)
            return "stopped"
        finalize(ctx, job)
        return job.state.value.lower()


def finalize(ctx: Context, job: Job) -> None:
    """Write the files of a COMPLETING job held under lease, then end it."""
    paths = paths_of(ctx, job)
    input_errors = _join_problems(ctx, job, paths)
    shards = list(ctx.jobs.shards(job.job_id))
    errors = _write_errors(ctx, shards, paths)
    state = final_state(job)
    written = [s for s in shards if s.state == ShardState.WRITTEN]
    job.output = JobOutput(prefix=paths.prefix, errors=errors.uri if errors else None, input_errors=input_errors,
                           files=len(written))
    job.estimate.cache_usd = CachePrices.cost(job.estimate.cache_reads, job.estimate.cache_writes)
    if written:
        job.output.changes = write_index_and_changes(ctx, job, paths, written)
        job.output.index = paths.index if job.output.changes else None
        ctx.blobs.write_bytes(paths.manifest, _manifest(ctx, job, state, shards, written, errors), "application/json")
        job.output.manifest = paths.manifest
        point_latest(ctx, job, paths)
    end_job(ctx, job, state, error=_failure_reason(job, shards) if state == JobState.FAILED else None)


def _join_problems(ctx: Context, job: Job, paths: JobPaths) -> str | None:
    """`input-errors.jsonl`: the problem files of every staged segment, in order (server-side compose).
    None when there is none to join; the job's `input_problems.uri` then names nothing either."""
    if not job.input_problems.count:
        return None
    parts = [paths.problems(n) for n in range(job.staging.segments)]
    parts = [p for p in parts if ctx.blobs.stat(p) is not None]
    if not parts and ctx.blobs.stat(paths.input_errors) is None:
        job.input_problems.uri = None
        return None
    if parts:
        ctx.blobs.compose(parts, paths.input_errors, JSONL)
    return paths.input_errors


def _write_errors(ctx: Context, shards: list[Shard], paths: JobPaths) -> FileRef | None:
    """`errors.jsonl`: every item that failed at its last try, with its id, code and message."""
    rows = 0
    with ctx.blobs.open_write(paths.errors, JSONL) as out:
        for shard in shards:
            for row in _final_failures(ctx, shard):
                out.write(orjson.dumps(row) + b"\n")
                rows += 1
    if not rows:
        ctx.blobs.delete(paths.errors)
        return None
    return file_ref(ctx, paths.errors, rows)


def _final_failures(ctx: Context, shard: Shard) -> Iterator[dict[str, Any]]:
    if shard.state == ShardState.ABANDONED:
        error = shard.provider_error or ErrorInfo(code="ABANDONED", message="the batch was abandoned")
        written = written_keys(ctx, shard)  # a continuation's records file is its root's: those written are not failed
        for _, row in iter_records(ctx, shard.records_uri):
            if row["key"] in written:
                continue
            yield {"id": row["id"], "key": row["key"], "code": error.code, "message": error.message,
                   "attempts": shard.item_attempt}
    elif shard.state == ShardState.WRITTEN and not shard.followed_up and shard.output and shard.output.failed_items_uri:
        for _, row in iter_records(ctx, shard.output.failed_items_uri):  # each row names its item's id
            yield {"id": row["id"], "key": row["key"], "code": row["code"], "message": row["message"],
                   "attempts": shard.item_attempt}


def _failure_reason(job: Job, shards: list[Shard]) -> ErrorInfo:
    reasons = {s.provider_error.code: s.provider_error.message for s in shards if s.provider_error}
    if reasons:
        code, message = next(iter(reasons.items()))
        return ErrorInfo(code=code, message=f"no item was embedded: {message}")
    return ErrorInfo(code="ALL_ITEMS_FAILED", message=f"all {job.counts.total} items failed; see errors.jsonl")


def _manifest(ctx: Context, job: Job, state: JobState, shards: list[Shard], written: list[Shard],
              errors: FileRef | None) -> bytes:
    options = job.options
    now = ctx.clock()
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job.job_id,
        "status": state.value,
        "source": {"bucket": job.source.bucket, "name": job.source.name, "generation": job.source.generation,
                   "size": job.source.size},
        "provider": options.provider,
        "model": options.model,
        "task_type": options.task_type,
        "dimensions": options.output_dimensionality,
        "normalized": "L2",
        "counts": job.counts.to_dict(),
        "success_rate": job.success_rate,
        "files": {
            "embeddings": [s.output.embeddings.model_dump(exclude_none=True) for s in written],
            "parquet": [s.output.parquet.model_dump(exclude_none=True) for s in written],
            "errors": errors.model_dump(exclude_none=True) if errors else None,
            "input_errors": job.input_problems.uri,
            "index": job.output.index,
            "changes": job.output.changes.uri if job.output.changes else None,
        },
        "changes": job.output.changes.model_dump(exclude={"uri"}) if job.output.changes else None,
        "reuse": reuse_summary(job),
        "input_problems": {"count": job.input_problems.count, "sample": job.input_problems.sample},
        "estimate": job.estimate.model_dump(),
        "shards": [
            {"index": s.index, "origin": s.origin.value, "batch": s.batch_name, "requests": s.request_count,
             "tokens": s.estimated_tokens, "reported_tokens": s.reported_tokens, "succeeded": s.succeeded,
             "failed": s.failed, "reused": s.reused, "state": s.state.value, "parent": s.parent,
             "item_attempt": s.item_attempt, "batch_attempts": s.batch_attempts}
            for s in shards
        ],
        "timings": {
            "created_at": job.created_at.isoformat(),
            "submitted_at": job.submitted_at.isoformat() if job.submitted_at else None,
            "first_admitted_at": job.first_admitted_at.isoformat() if job.first_admitted_at else None,
            "waited_seconds": _seconds(job.first_admitted_at - job.created_at) if job.first_admitted_at else None,
            "written_at": now.isoformat(),
            "seconds_to_results": _seconds(now - job.created_at),
        },
    }
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


def _seconds(delta: timedelta) -> float:
    return round(max(delta / timedelta(seconds=1), 0.0), 3)


# -- the end ----------------------------------------------------------------------------------------------


def end_job(ctx: Context, job: Job, state: JobState, *, error: ErrorInfo | None = None) -> Job:
    """Move `job` (held under lease) to a terminal state and announce it. Idempotent. A job that ends
    before `finalize` (failed in staging or submission, cancelled) still gets its `input-errors.jsonl`."""
    if not job.terminal:
        now = ctx.clock()
        if job.input_problems.count and not (job.output and job.output.input_errors):
            paths = paths_of(ctx, job)
            job.output = job.output or JobOutput(prefix=paths.prefix)
            job.output.input_errors = _join_problems(ctx, job, paths)
        if error is not None:
            job.error = ErrorInfo(code=error.code, message=error.message, at=now)
        job.event_id = job.event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"completion:{job.job_id}"))
        if job.state != JobState.COMPLETING and state not in (JobState.FAILED, JobState.CANCELLED):
            job.move_to(JobState.COMPLETING, now)
        job.move_to(state, now)
        save(ctx, job)
        log.info("job ended", job_id=job.job_id, state=job.state.value, counts=job.counts.model_dump())
    return publish_completion(ctx, job)


def publish_completion(ctx: Context, job: Job) -> Job:
    """Publish an ended job's completion event unless it was, then drop its staging files."""
    if not job.terminal:
        return job
    settings = ctx.settings
    if job.event_published_at is None:
        embeddings, parquet = _output_files(ctx, job)
        event = completion_event_for(job, settings.success_rate_alert_threshold, embeddings, parquet)
        if event.low_success_rate:
            log.warning(
                f"job {job.job_id} success rate {job.success_rate}% is under {settings.success_rate_alert_threshold}%",
                job_id=job.job_id, success_rate=job.success_rate, counts=job.counts.model_dump(),
            )
        message_id = ctx.publisher.publish(settings.events_topic, event.data(), event.attributes())
        job.event_published_at = ctx.clock()
        save(ctx, job)
        log.info("completion event published", job_id=job.job_id, status=event.status, message_id=message_id)
    if settings.keep_staging or _drop_staging(ctx, job):
        job.next_poll_at = None
    save(ctx, job, last=True)
    return job


def _output_files(ctx: Context, job: Job) -> tuple[list[str], list[str]]:
    if not (job.output and job.output.manifest):
        return [], []
    written = [s for s in ctx.jobs.shards(job.job_id, states=[ShardState.WRITTEN]) if s.output]
    return [s.output.embeddings.uri for s in written], [s.output.parquet.uri for s in written]


def _drop_staging(ctx: Context, job: Job) -> bool:
    """Delete the job's staging files, up to a batch of them; True when none is left. The bucket's
    lifecycle rule sweeps what a job that never ended left behind."""
    staging = paths_of(ctx, job).staging
    deleted = 0
    for blob in ctx.blobs.list(staging, limit=_CLEANUP_BATCH):
        ctx.blobs.delete(blob.uri)
        deleted += 1
    return deleted < _CLEANUP_BATCH
