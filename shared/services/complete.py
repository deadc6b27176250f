"""Complete: write a finished job's results, resubmit its failed items, and end it.

Triggered by the poller's message on the complete topic (at-least-once). Guarantees:
- idempotent: output files have fixed names, each shard is marked WRITTEN once its files are durable,
  and `manifest.json` is written last, as the commit marker, before the job's one completion event;
  a run killed anywhere and run again writes the same files, one manifest and one event;
- items whose own request failed are resubmitted as a follow-up shard while `max_item_attempts`
  allows; the job goes back to RUNNING and returns here when the follow-up is done;
- memory is bounded by one shard's id map plus one block of vectors (`shared.services.output`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson

from shared.domain.jobs import ErrorInfo, FileRef, Job, JobOutput, JobState, Shard, ShardState
from shared.domain.paths import JobPaths
from shared.errors import PermanentError
from shared.logging import get_logger
from shared.services.batches import ensure_batch
from shared.services.cancel import cancel_held
from shared.services.context import Context
from shared.services.finish import end_job, publish_completion
from shared.services.leasing import leased, save
from shared.services.output import file_ref, write_shard_output

__all__ = ["complete_job", "final_state"]

log = get_logger(__name__)

MANIFEST_VERSION = "1"


def complete_job(ctx: Context, job_id: str) -> str:
    """Finish the job if it is COMPLETING; returns what was done. Raises LeaseHeld when busy."""
    with leased(ctx, job_id) as job:
        if job.terminal:
            publish_completion(ctx, job)
            return "already_ended"
        if job.state != JobState.COMPLETING:
            return "not_ready"
        if job.cancel_requested:
            cancel_held(ctx, job)
            return "cancelled"
        paths = JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix)
        for shard in job.shards:
            if shard.state == ShardState.SUCCEEDED:
                _write_shard(ctx, job, shard, paths)
        if _resubmit_failed_items(ctx, job, paths):
            return "resubmitted_failed_items"
        _finalize(ctx, job, paths)
        return job.state.value.lower()


def _write_shard(ctx: Context, job: Job, shard: Shard, paths: JobPaths) -> None:
    """Write one shard's results; a shard whose results cannot be read at all is abandoned, not retried
    forever (a transient error still propagates, for a retry)."""
    try:
        shard.output = write_shard_output(ctx, paths, shard, job.options.output_dimensionality)
    except PermanentError as exc:
        log.error(f"results of shard {shard.index} are unreadable: {exc.message}", shard=shard.index, code=exc.code)
        shard.abandon(ErrorInfo(code=exc.code, message=f"results unreadable: {exc.message}"))
    else:
        shard.succeeded, shard.failed = shard.output.succeeded, shard.output.failed
        shard.state = ShardState.WRITTEN
        log.info("shard written", shard=shard.index, succeeded=shard.succeeded, failed=shard.failed)
    job.refresh_counts()
    save(ctx, job)


def final_state(job: Job) -> JobState:
    """SUCCEEDED when every record was embedded; PARTIALLY_SUCCEEDED when some were not (failed items or
    input problems); FAILED when none was."""
    if job.counts.succeeded == 0:
        return JobState.FAILED
    if job.counts.failed or job.counts.input_problems:
        return JobState.PARTIALLY_SUCCEEDED
    return JobState.SUCCEEDED


# -- follow-up shards ---------------------------------------------------------------------------


def _resubmit_failed_items(ctx: Context, job: Job, paths: JobPaths) -> bool:
    """Stage and create a follow-up shard for each written shard with failed items and tries left."""
    parents = job.followed_up
    candidates = [
        s for s in job.shards
        if s.state == ShardState.WRITTEN and s.failed and s.index not in parents
        and s.item_attempt < ctx.settings.max_item_attempts
    ]
    if not candidates:
        return False
    for parent in candidates:
        child = _stage_follow_up(ctx, job, parent, paths)
        job.shards.append(child)
        save(ctx, job)
        log.info("resubmitting failed items", shard=child.index, parent=parent.index, items=child.request_count,
                 attempt=child.item_attempt)
    for shard in job.shards:
        ensure_batch(ctx, job, shard)
    now = ctx.clock()
    job.refresh_counts()
    job.move_to(JobState.RUNNING, now)
    job.next_poll_at = ctx.next_poll_at(now, size=sum(s.request_count for s in candidates), age_seconds=0)
    save(ctx, job, last=True)
    return True


def _stage_follow_up(ctx: Context, job: Job, parent: Shard, paths: JobPaths) -> Shard:
    failed = {row["key"] for row in _jsonl(ctx, parent.output.failed_items_uri)}
    index = len(job.shards)
    count = size = tokens = 0
    with ctx.blobs.open_write(paths.requests(index), "application/jsonl") as requests, \
            ctx.blobs.open_write(paths.records(index), "application/jsonl") as records:
        for line in _lines(ctx, parent.requests_uri):
            if orjson.loads(line)["key"] in failed:
                requests.write(line)
                count += 1
                size += len(line)
        for line in _lines(ctx, parent.records_uri):
            if orjson.loads(line)["key"] in failed:
                records.write(line)
    if parent.request_count:
        tokens = parent.estimated_tokens * count // parent.request_count
    return Shard(
        index=index, mode=ctx.settings.shard_mode(count, size), request_count=count,
        request_bytes=size, estimated_tokens=tokens, requests_uri=paths.requests(index),
        records_uri=paths.records(index), parent=parent.index, item_attempt=parent.item_attempt + 1,
    )


# -- the end ------------------------------------------------------------------------------------


def _finalize(ctx: Context, job: Job, paths: JobPaths) -> None:
    job.refresh_counts()
    errors = _write_errors(ctx, job, paths)
    state = final_state(job)
    written = [s for s in job.shards if s.state == ShardState.WRITTEN]
    job.output = JobOutput(
        prefix=paths.prefix,
        embeddings=[s.output.embeddings.uri for s in written],
        parquet=[s.output.parquet.uri for s in written],
        errors=errors.uri if errors else None,
        input_errors=job.input_problems.uri,
    )
    if written:
        ctx.blobs.write_bytes(paths.manifest, _manifest(ctx, job, state, written, errors), "application/json")
        job.output.manifest = paths.manifest
    error = None
    if state == JobState.FAILED:
        error = _failure_reason(job)
    end_job(ctx, job, state, error=error)


def _write_errors(ctx: Context, job: Job, paths: JobPaths) -> FileRef | None:
    """`errors.jsonl`: every item that failed at its last try, with its id, code and message."""
    final = [s for s in job.shards if s.index not in job.followed_up]
    rows = 0
    with ctx.blobs.open_write(paths.errors, "application/jsonl") as out:
        for shard in final:
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
        for row in _jsonl(ctx, shard.records_uri):
            yield {"id": row["id"], "key": row["key"], "code": error.code, "message": error.message,
                   "attempts": shard.item_attempt}
    elif shard.state == ShardState.WRITTEN and shard.output and shard.output.failed_items_uri:
        for row in _jsonl(ctx, shard.output.failed_items_uri):  # each row names its item's id
            yield {"id": row["id"], "key": row["key"], "code": row["code"], "message": row["message"],
                   "attempts": shard.item_attempt}


def _failure_reason(job: Job) -> ErrorInfo:
    reasons = {s.provider_error.code: s.provider_error.message for s in job.shards if s.provider_error}
    if reasons:
        code, message = next(iter(reasons.items()))
        return ErrorInfo(code=code, message=f"no item was embedded: {message}")
    return ErrorInfo(code="ALL_ITEMS_FAILED", message=f"all {job.counts.total} items failed; see errors.jsonl")


def _manifest(ctx: Context, job: Job, state: JobState, written: list[Shard], errors: FileRef | None) -> bytes:
    options = job.options
    now = ctx.clock()
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job.job_id,
        "status": state.value,
        "source": {"bucket": job.source.bucket, "name": job.source.name, "generation": job.source.generation,
                   "size": job.source.size},
        "model": options.model,
        "task_type": options.task_type.value,
        "dimensions": options.output_dimensionality,
        "normalized": "L2",
        "counts": job.counts.to_dict(),
        "success_rate": job.success_rate,
        "files": {
            "embeddings": [s.output.embeddings.model_dump(exclude_none=True) for s in written],
            "parquet": [s.output.parquet.model_dump(exclude_none=True) for s in written],
            "errors": errors.model_dump(exclude_none=True) if errors else None,
            "input_errors": job.input_problems.uri,
        },
        "input_problems": {"count": job.input_problems.count, "sample": job.input_problems.sample},
        "estimate": job.estimate.model_dump(),
        "shards": [
            {"index": s.index, "batch": s.batch_name, "mode": s.mode.value, "requests": s.request_count,
             "succeeded": s.succeeded, "failed": s.failed, "state": s.state.value, "parent": s.parent,
             "item_attempt": s.item_attempt, "batch_attempts": s.batch_attempts}
            for s in job.shards
        ],
        "timings": {
            "created_at": job.created_at.isoformat(),
            "submitted_at": job.submitted_at.isoformat() if job.submitted_at else None,
            "written_at": now.isoformat(),
            "seconds_to_results": round((now - job.created_at) / timedelta(seconds=1), 3),
        },
    }
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


def _lines(ctx: Context, uri: str) -> Iterator[bytes]:
    with ctx.blobs.open_read(uri) as stream:
        for line in stream:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def _jsonl(ctx: Context, uri: str) -> Iterator[dict[str, Any]]:
    for line in _lines(ctx, uri):
        yield orjson.loads(line)
