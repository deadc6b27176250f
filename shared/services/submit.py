"""Submit: a landed object becomes exactly one job, and its input becomes shards waiting for capacity.

Guarantees:
- one job per (bucket, name, generation), however often and however concurrently the event arrives: the
  job document is created with a conditional write before anything else happens;
- staging resumes where the last delivery's checkpoint left it, and one invocation stages for a bounded
  time before handing the rest on (`shared.services.staging`); the poller hands stalled staging back here;
- shards are admitted as they are staged (first come, by priority and fairness); a job whose options say
  `on_bad_record=fail` keeps its shards out of the queue until the whole file is read clean;
- bad input never raises: options, whole-file and per-record problems are recorded on the job, which
  fails with a clear error and a FAILED event when nothing usable remains.
Raises `TransientError` only when a retry can help (provider busy, another delivery holds the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from shared.domain.jobs import ErrorInfo, Job, JobState, ShardOrigin, ShardState, SourceObject, job_id_for
from shared.domain.options import OnBadRecord, OptionError, options_from_metadata
from shared.errors import NotFound, PermanentError
from shared.logging import bind, get_logger
from shared.services import messages
from shared.services.admission import admit, configure_ledger
from shared.services.cancel import stop_held
from shared.services.context import Context
from shared.services.finish import finalize, publish_completion
from shared.services.leasing import leased, save
from shared.services.staging import stage_input

__all__ = ["SubmitOutcome", "SubmitResult", "in_scope", "resume_submission", "submit_object"]

log = get_logger(__name__)


class SubmitOutcome(StrEnum):
    IGNORED = "ignored"  # not an input of this pipeline
    SUBMITTED = "submitted"  # staged; its shards wait for capacity or run
    CONTINUED = "continued"  # staged in part; the rest is handed to the next invocation
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
    """Carry a SUBMITTING job's staging as far as this invocation may, then admit what is staged (whatever is
    left to read). Used by submit and stage."""
    with leased(ctx, job_id) as job:
        settled = _settled(ctx, job)
        if settled is not None:
            return settled
        done, failure = True, _options(ctx, job)
        if failure is None:
            done, failure = _stage(ctx, job) if not job.staging.done else (True, _check(job))
        if failure is not None:  # its shards are stopped, now or by a later pass, then it ends FAILED
            job.failing = failure
            log.warning(f"job failed: {failure.message}", code=failure.code)
            stop_held(ctx, job)
            return SubmitResult(SubmitOutcome.FAILED, job_id, reason=failure.message)
        if not done:  # the time budget ran out: the next invocation reads on from the checkpoint
            job.next_poll_at = ctx.clock() + timedelta(minutes=ctx.settings.submit_stale_minutes)
            save(ctx, job, last=True)
            messages.stage_job(ctx, job_id)
        else:
            _open_to_queue(ctx, job)
            if job.state == JobState.COMPLETING:  # every shard ended before staging did: ours to finish
                finalize(ctx, job)
                return SubmitResult(SubmitOutcome.SUBMITTED, job_id)
            log.info("job staged", shards=job.shard_count, records=job.counts.total,
                     input_tokens=job.estimate.input_tokens, cost_batch_usd=job.estimate.cost_batch_usd)
        ledger = job.ledger
    admit(ctx, ledger, inline=True)
    return SubmitResult(SubmitOutcome.SUBMITTED if done else SubmitOutcome.CONTINUED, job_id)


def _settled(ctx: Context, job: Job) -> SubmitResult | None:
    """What a delivery for a job past staging (or cancelled) amounts to, or None when it has staging to do."""
    if job.terminal:
        publish_completion(ctx, job)
        return SubmitResult(SubmitOutcome.ALREADY_DONE, job.job_id, reason=job.state.value)
    if job.state != JobState.SUBMITTING:
        if job.staging.held and not job.staging.opened and not job.stopping:  # opening them was interrupted
            _open_to_queue(ctx, job)
            admit(ctx, job.ledger, inline=True)
        return SubmitResult(SubmitOutcome.ALREADY_DONE, job.job_id, reason=job.state.value)
    if job.stopping:
        stop_held(ctx, job)
        return SubmitResult(SubmitOutcome.FAILED, job.job_id, reason=job.failing.message if job.failing else "cancelled")
    return None


def _options(ctx: Context, job: Job) -> ErrorInfo | None:
    """Validate the options once, against the chosen provider's capabilities, and place the job in its
    ledger's queue."""
    if job.options is not None:
        return None
    try:
        job.options = options_from_metadata(job.source.metadata, ctx.settings.default_options(), ctx.capabilities)
    except OptionError as exc:
        return ErrorInfo(code="INVALID_OPTION", message=str(exc))
    capabilities = ctx.capabilities(job.options.provider, job.options.model)
    job.ledger = capabilities.ledger_key
    # The ledger exists from its first job on, so the poller's tick admits its queue whatever happens here.
    ledger, _ = ctx.ledgers.update(job.ledger, lambda ledger: configure_ledger(ledger, ctx, capabilities))
    job.staging.fair_start = ledger.virtual_time
    save(ctx, job)
    return None


def _stage(ctx: Context, job: Job) -> tuple[bool, ErrorInfo | None]:
    """Stage on; returns whether the input is all staged, and why the job must fail, if it must."""
    if job.source.size == 0:
        return True, ErrorInfo(code="EMPTY_INPUT", message=f"{job.source.uri} is empty (0 bytes): there is nothing to embed")
    job.staging.invocations += 1
    job.staging.held = job.options.on_bad_record == OnBadRecord.FAIL
    save(ctx, job)
    try:
        outcome = stage_input(ctx, job, ctx.capabilities(job.options.provider, job.options.model),
                              held=job.staging.held)
    except NotFound:
        return True, ErrorInfo(code="SOURCE_NOT_FOUND", message=(
            f"{job.source.uri} generation {job.source.generation} was deleted or replaced before it could be read"))
    except PermanentError as exc:
        return True, ErrorInfo(code="STAGING_FAILED", message=exc.message)
    if not outcome.done:
        return False, None
    return True, _check(job)


def _check(job: Job) -> ErrorInfo | None:
    problems = job.input_problems
    fatal = job.staging.fatal
    if job.counts.total == 0:
        if fatal is not None:
            return ErrorInfo(code=fatal["code"], message=fatal["message"])
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


def _open_to_queue(ctx: Context, job: Job) -> None:
    """Shards staged held (on_bad_record=fail) join their ledger's queue now that the file read clean; the
    job notes when all have (until then, any delivery for it, or the poller's heartbeat, opens the rest)."""
    if not job.staging.held or job.staging.opened:
        return
    for shard in ctx.jobs.shards(job.job_id, states=[ShardState.STAGED.value]):
        if not shard.ledger:
            ctx.jobs.update_shard(job.job_id, shard.index, lambda s: setattr(s, "ledger", job.ledger))
    stale = ctx.clock() + timedelta(minutes=ctx.settings.complete_stale_minutes)
    for shard in ctx.jobs.shards(job.job_id, states=[ShardState.SUCCEEDED.value]):
        if shard.origin == ShardOrigin.CACHE and shard.next_poll_at is None:  # found in the cache: write it
            ctx.jobs.update_shard(job.job_id, shard.index, lambda s: setattr(s, "next_poll_at", stale))
            messages.write_shard(ctx, job.job_id, shard.index)
    job.staging.opened = True
    save(ctx, job)
