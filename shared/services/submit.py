"""Submit: a landed object becomes exactly one job, and that job's records become provider batches.

Guarantees:
- one job per (bucket, name, generation), however often and however concurrently the event arrives: the
  job document is created with a conditional write before anything else happens;
- one batch per shard attempt: see `shared.services.batches`; a delivery after a crash resumes where the
  last one stopped (staging, upload, create) instead of starting over;
- bad input never raises: options, whole-file and per-record problems are recorded on the job, which
  fails with a clear error and a FAILED event when nothing usable remains.
Raises `TransientError` only when a retry can help (provider busy, another delivery holds the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from shared.domain.jobs import ErrorInfo, Job, JobState, SourceObject, job_id_for
from shared.domain.options import OnBadRecord, OptionError, options_from_metadata
from shared.errors import NotFound, PermanentError
from shared.logging import bind, get_logger
from shared.services.batches import ensure_batch, stop_batch
from shared.services.cancel import cancel_held
from shared.services.context import Context
from shared.services.finish import end_job, publish_completion
from shared.services.leasing import leased, renew, save
from shared.services.staging import stage_input

__all__ = ["SubmitOutcome", "SubmitResult", "in_scope", "resume_submission", "submit_object"]

log = get_logger(__name__)


class SubmitOutcome(StrEnum):
    IGNORED = "ignored"  # not an input of this pipeline
    SUBMITTED = "submitted"  # batches created, job RUNNING
    ALREADY_DONE = "already_done"  # a duplicate delivery: the job is past submission
    FAILED = "failed"  # the job failed (bad input or options); its event is published


@dataclass(frozen=True)
class SubmitResult:
    outcome: SubmitOutcome
    job_id: str | None = None
    reason: str = ""


def in_scope(source: SourceObject, ctx: Context) -> str | None:
    """Why the object is not an input of this pipeline, or None when it is."""
    s = ctx.settings
    if source.bucket == s.output_bucket and source.name.startswith(s.output_prefix):
        return "an output of this pipeline"
    if source.bucket != s.input_bucket:
        return f"not in the input bucket {s.input_bucket}"
    if not source.name.startswith(s.input_prefix):
        return f"outside the input prefix {s.input_prefix!r}"
    if source.name.endswith("/"):
        return "a folder placeholder"
    return None


def submit_object(ctx: Context, source: SourceObject) -> SubmitResult:
    """Handle one finalize event for `source`. Idempotent (see the module docstring)."""
    reason = in_scope(source, ctx)
    if reason is not None:
        log.info(f"ignored gs://{source.bucket}/{source.name}: {reason}")
        return SubmitResult(SubmitOutcome.IGNORED, reason=reason)
    now = ctx.clock()
    job_id = job_id_for(source.bucket, source.name, source.generation)
    with bind(job_id=job_id):
        job, created = ctx.jobs.create(Job(
            job_id=job_id, source=source, created_at=now, updated_at=now,
            deadline_at=now + timedelta(hours=ctx.settings.job_deadline_hours),
            next_poll_at=now + timedelta(minutes=ctx.settings.submit_stale_minutes),
        ))
        log.info("job created" if created else "job exists", source=source.uri, generation=source.generation)
        return resume_submission(ctx, job.job_id)


def resume_submission(ctx: Context, job_id: str) -> SubmitResult:
    """Carry a SUBMITTING job as far as it goes: options, staging, batches. Used by submit and the poller."""
    with leased(ctx, job_id) as job:
        if job.terminal:
            publish_completion(ctx, job)
            return SubmitResult(SubmitOutcome.ALREADY_DONE, job_id, reason=job.state.value)
        if job.state != JobState.SUBMITTING:
            return SubmitResult(SubmitOutcome.ALREADY_DONE, job_id, reason=job.state.value)
        if job.cancel_requested:  # batches of shards created before the request are stopped too
            cancel_held(ctx, job)
            return SubmitResult(SubmitOutcome.FAILED, job_id, reason="cancelled")
        failure = _prepare(ctx, job)
        if failure is not None:
            end_job(ctx, job, JobState.FAILED, error=failure)
            log.warning(f"job failed: {failure.message}", code=failure.code)
            return SubmitResult(SubmitOutcome.FAILED, job_id, reason=failure.message)
        try:
            for shard in job.shards:
                ensure_batch(ctx, job, shard)
        except PermanentError as exc:
            _cancel_created(ctx, job)
            end_job(ctx, job, JobState.FAILED, error=ErrorInfo(code=exc.code, message=f"the provider refused the batch: {exc.message}"))
            return SubmitResult(SubmitOutcome.FAILED, job_id, reason=exc.message)
        now = ctx.clock()
        job.submitted_at = now
        job.refresh_counts()
        job.move_to(JobState.RUNNING, now)
        job.next_poll_at = ctx.next_poll_at(now, size=job.counts.total, age_seconds=0)
        save(ctx, job, last=True)
        log.info("job submitted", shards=len(job.shards), records=job.counts.total,
                 input_tokens=job.estimate.input_tokens, cost_batch_usd=job.estimate.cost_batch_usd)
        return SubmitResult(SubmitOutcome.SUBMITTED, job_id)


def _prepare(ctx: Context, job: Job) -> ErrorInfo | None:
    """Validate options and stage the input, once. Returns why the job must fail, or None."""
    if job.options is None:
        try:
            job.options = options_from_metadata(job.source.metadata, ctx.settings.default_options())
        except OptionError as exc:
            return ErrorInfo(code="INVALID_OPTION", message=str(exc))
        save(ctx, job)
    if job.staged:
        return None
    if job.source.size == 0:
        return ErrorInfo(code="EMPTY_INPUT", message=f"{job.source.uri} is empty (0 bytes): there is nothing to embed")
    try:
        fatal = stage_input(ctx, job, heartbeat=lambda: renew(ctx, job.job_id))
    except NotFound:
        return ErrorInfo(code="SOURCE_NOT_FOUND", message=(
            f"{job.source.uri} generation {job.source.generation} was deleted or replaced before it could be read"))
    save(ctx, job)
    problems = job.input_problems
    if job.counts.total == 0:
        if fatal is not None:
            return ErrorInfo(code=fatal.code, message=fatal.message)
        first = problems.sample[0]["message"] if problems.sample else "no records"
        return ErrorInfo(code="NO_VALID_RECORDS", message=f"none of the records could be used ({problems.count} problems; first: {first})")
    if problems.count and job.options.on_bad_record == OnBadRecord.FAIL:
        first = problems.sample[0]
        where = f"line {first['line']}: " if first.get("line") else ""
        return ErrorInfo(
            code="BAD_RECORDS",
            message=f"{problems.count} bad record(s) and on_bad_record=fail (first: {where}{first['message']})",
        )
    return None


def _cancel_created(ctx: Context, job: Job) -> None:
    for shard in job.shards:
        if shard.batch_name:
            stop_batch(ctx, shard.batch_name)
