"""Poll: move every due job one step forward. Called by Cloud Scheduler through the poller function.

Reads only due jobs (one indexed query), bounded by count and time; one job's error never stops the run.
Most polls only refresh a RUNNING job's batches: that needs no lease, and costs the query's read and one
write made on condition that nobody wrote the job since (a job leased or written meanwhile is skipped: its
worker carries on). Every other step is taken under the job's lease, so overlapping runs never take it
twice. Each job is moved along:
- RUNNING: refresh its batches; retry a batch the provider failed or expired while attempts remain,
  else abandon it; past the job's deadline, stop what still runs; when no batch is left running, hand
  the job to `complete` (a message on the complete topic). The next poll comes at the batches' estimated
  end when their progress tells it, else by the batch size and age (`shared.domain.schedule`).
- SUBMITTING, untouched for a while: resume the submission (the submit deliveries gave up or died).
- COMPLETING, untouched for a while: hand it to `complete` again; still not done a day past the
  deadline (complete keeps failing): fail it, so that it ends with an event.
- ended with its event unpublished: publish it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from shared.domain.jobs import (
    SHARD_IN_FLIGHT,
    SHARD_PROVIDER_FAILED,
    ErrorInfo,
    Job,
    JobState,
    ShardState,
)
from shared.errors import NotFound, PermanentError, TransientError
from shared.logging import bind, get_logger
from shared.services.batches import adopt, ensure_batch, stop_batch
from shared.services.cancel import cancel_held
from shared.services.context import Context
from shared.services.finish import end_job, publish_completion
from shared.services.leasing import LeaseHeld, leased, save
from shared.services.submit import resume_submission

__all__ = ["PollSummary", "hand_to_complete", "poll_due_jobs", "poll_job"]

log = get_logger(__name__)

#: How long after its deadline a job may still be completing before it is failed (complete keeps failing).
COMPLETION_GRACE = timedelta(hours=24)


@dataclass
class PollSummary:
    due: int = 0
    polled: int = 0
    progressed: int = 0  # jobs whose batches moved since their last poll
    handed_to_complete: int = 0
    resubmitted: int = 0
    events_published: int = 0
    skipped_leased: int = 0
    errors: int = 0
    out_of_time: bool = False
    seconds: float = 0.0
    job_errors: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def poll_due_jobs(ctx: Context) -> PollSummary:
    """One scheduler tick: every due job, until the count or time budget runs out."""
    started = time.monotonic()
    settings = ctx.settings
    summary = PollSummary()
    jobs = ctx.jobs.due(ctx.clock(), settings.poll_max_jobs)
    summary.due = len(jobs)
    for job in jobs:
        if time.monotonic() - started > settings.poll_time_budget_seconds:
            summary.out_of_time = True
            break
        with bind(job_id=job.job_id):
            try:
                step = _poll(ctx.for_invocation(), job)
                summary.polled += 1
                summary.progressed += step == "progressed"
                summary.handed_to_complete += step == "handed_to_complete"
                summary.resubmitted += step == "resubmitted"
                summary.events_published += step == "event_published"
            except LeaseHeld:
                summary.skipped_leased += 1
            except Exception as exc:  # noqa: BLE001 - one job's error never stops the run
                summary.errors += 1
                summary.job_errors.append({"job_id": job.job_id, "error": type(exc).__name__, "message": str(exc)[:300]})
                log.warning("poll failed for job", exc_info=True)
                _note_failure(ctx, job.job_id, exc)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("poll run", **summary.to_dict())
    return summary


def _poll(ctx: Context, job: Job) -> str:
    if job.leased_by_other(ctx.owner, ctx.clock()):
        raise LeaseHeld(f"job {job.job_id} is being worked on by another worker")
    return _refresh_unleased(ctx, job) or poll_job(ctx, job.job_id)


def _refresh_unleased(ctx: Context, job: Job) -> str | None:
    """Refresh a RUNNING job whose shards all have their batch, in one conditional write.

    Returns None, having written nothing, when the job needs a step that must not run twice (creating or
    retrying a batch, cancelling, stopping at the deadline): the caller takes the lease for it. Raises
    `LeaseHeld` when the job was written since it was read.
    """
    now = ctx.clock()
    if (job.state != JobState.RUNNING or job.cancel_requested or _past_deadline(job, now)
            or any(s.state in (ShardState.STAGED, ShardState.CREATING) for s in job.shards)):
        return None
    before = _progress(job)
    for shard in job.shards:
        if shard.state in SHARD_IN_FLIGHT and shard.batch_name:
            try:
                adopt(shard, ctx.provider.get_batch(shard.batch_name))
            except NotFound:
                return None
    if any(shard.state in SHARD_PROVIDER_FAILED for shard in job.shards):
        return None
    job.refresh_counts()
    job.poll_failures = 0
    job.lease_owner = job.lease_until = None  # a lease left on a due job has expired: its worker is gone
    job.updated_at = now
    done = _all_shards_done(job)
    if done:
        job.move_to(JobState.COMPLETING, now)
        job.next_poll_at = now + timedelta(minutes=ctx.settings.complete_stale_minutes)
    else:
        job.next_poll_at = _next_running_poll(ctx, job, now)
    if not ctx.jobs.replace_if_unchanged(job):
        raise LeaseHeld(f"job {job.job_id} was written by another worker meanwhile")
    if done:
        _publish_to_complete(ctx, job)
        return "handed_to_complete"
    return "progressed" if _progress(job) != before else "unchanged"


def poll_job(ctx: Context, job_id: str) -> str:
    """Move one job forward; returns what was done. Raises LeaseHeld when another worker has it."""
    with leased(ctx, job_id) as job:
        step = _step(ctx, job)
    if step == "resume_submission":  # under its own lease, as a submit delivery would
        resume_submission(ctx, job_id)
        return "resubmitted"
    return step


def _step(ctx: Context, job: Job) -> str:
    if job.terminal:
        publish_completion(ctx, job)
        return "event_published"
    if job.cancel_requested:
        cancel_held(ctx, job)
        return "cancelled"
    now = ctx.clock()
    idle = now - job.updated_at
    if job.state == JobState.SUBMITTING:
        if _past_deadline(job, now):
            return _fail_overdue(ctx, job, "DEADLINE_EXCEEDED", "the submission did not complete before the job's deadline")
        if idle < timedelta(minutes=ctx.settings.submit_stale_minutes):
            return _reschedule(ctx, job, minutes=ctx.settings.submit_stale_minutes)
        return "resume_submission"
    if job.state == JobState.COMPLETING:
        if job.deadline_at is not None and now >= job.deadline_at + COMPLETION_GRACE:
            return _fail_overdue(ctx, job, "COMPLETION_FAILED", "the results could not be written in time")
        if idle >= timedelta(minutes=ctx.settings.complete_stale_minutes):
            hand_to_complete(ctx, job)
            return "handed_to_complete"
        return _reschedule(ctx, job, minutes=ctx.settings.complete_stale_minutes)
    return _advance_running(ctx, job)


def _fail_overdue(ctx: Context, job: Job, code: str, message: str) -> str:
    last = f" (last error: {job.last_error.message})" if job.last_error else ""
    end_job(ctx, job, JobState.FAILED, error=ErrorInfo(code=code, message=message + last))
    return "failed_overdue"


def _advance_running(ctx: Context, job: Job) -> str:
    now = ctx.clock()
    past_deadline = _past_deadline(job, now)
    before = _progress(job)
    for shard in job.shards:
        if shard.state in SHARD_IN_FLIGHT and shard.batch_name:
            if past_deadline:
                stop_batch(ctx, shard.batch_name)
                shard.abandon(ErrorInfo(code="DEADLINE_EXCEEDED", message="the job passed its deadline"))
                continue
            try:
                adopt(shard, ctx.provider.get_batch(shard.batch_name))
            except NotFound as exc:  # the provider lost it (deleted, or restarted): retry by policy
                shard.state = ShardState.FAILED
                shard.provider_error = ErrorInfo(code="BATCH_NOT_FOUND", message=exc.message)
        if shard.state in SHARD_PROVIDER_FAILED:
            if shard.batch_attempts < ctx.settings.max_batch_attempts and not past_deadline:
                log.warning("retrying a batch the provider ended without results", shard=shard.index,
                            state=shard.state.value, attempt=shard.batch_attempts)
                shard.state = ShardState.STAGED
                shard.batch_name = None
                shard.input_file = None  # uploaded files expire: upload again
            else:
                shard.abandon(shard.provider_error or ErrorInfo(code=shard.state.value, message=f"the provider ended the batch {shard.state.value}"))
    for shard in job.shards:
        if shard.state in (ShardState.STAGED, ShardState.CREATING) and not past_deadline:
            try:
                ensure_batch(ctx, job, shard)
            except PermanentError as exc:
                shard.abandon(ErrorInfo(code=exc.code, message=f"the provider refused the batch: {exc.message}"))
        elif shard.state in (ShardState.STAGED, ShardState.CREATING):
            shard.abandon(ErrorInfo(code="DEADLINE_EXCEEDED", message="the job passed its deadline"))
    job.refresh_counts()
    job.poll_failures = 0
    if _all_shards_done(job):
        job.move_to(JobState.COMPLETING, now)
        hand_to_complete(ctx, job)
        return "handed_to_complete"
    job.next_poll_at = _next_running_poll(ctx, job, now)
    save(ctx, job, last=True)
    return "progressed" if _progress(job) != before else "unchanged"


def _progress(job: Job) -> str:
    """What a poll can learn: the shards' states and counts (the poll times always move)."""
    return job.model_dump_json(include={"shards", "counts"})


def _past_deadline(job: Job, now: datetime) -> bool:
    return job.deadline_at is not None and now >= job.deadline_at


def _all_shards_done(job: Job) -> bool:
    return all(s.state in (ShardState.SUCCEEDED, ShardState.WRITTEN, ShardState.ABANDONED) for s in job.shards)


def _next_running_poll(ctx: Context, job: Job, now: datetime) -> datetime:
    return ctx.next_poll_at(
        now, size=job.counts.total, age_seconds=(now - (job.submitted_at or job.created_at)).total_seconds(),
        seconds_left=_seconds_left(job, now),
    )


def _seconds_left(job: Job, now: datetime) -> float | None:
    """When the batches in flight should end, at the pace each has kept since its creation; None until
    every one of them has made progress."""
    left = 0.0
    for shard in job.shards:
        if shard.state not in SHARD_IN_FLIGHT:
            continue
        done = shard.succeeded + shard.failed
        if not done or shard.create_started_at is None:
            return None
        elapsed = (now - shard.create_started_at).total_seconds()
        left = max(left, elapsed * shard.pending / done)
    return left


def hand_to_complete(ctx: Context, job: Job) -> None:
    """Publish the job's id on the complete topic; `complete` takes it from there. Saves the job (the
    lease's last write: the publication comes after it)."""
    job.next_poll_at = ctx.clock() + timedelta(minutes=ctx.settings.complete_stale_minutes)
    save(ctx, job, last=True)
    _publish_to_complete(ctx, job)


def _publish_to_complete(ctx: Context, job: Job) -> None:
    ctx.publisher.publish(
        ctx.settings.complete_topic, json.dumps({"job_id": job.job_id}).encode(), {"job_id": job.job_id},
    )
    log.info("handed to complete", state=job.state.value)


def _reschedule(ctx: Context, job: Job, minutes: float) -> str:
    job.next_poll_at = ctx.clock() + timedelta(minutes=minutes)
    save(ctx, job, last=True)
    return "rescheduled"


def _note_failure(ctx: Context, job_id: str, exc: Exception) -> None:
    """Back the job off after an error, so a failing job is not hammered every tick."""
    now = ctx.clock()

    def back_off(job: Job) -> None:
        job.poll_failures += 1
        job.last_error = ErrorInfo(
            code=getattr(exc, "code", type(exc).__name__), message=str(exc)[:500], at=now,
        )
        if job.next_poll_at is not None:
            job.next_poll_at = ctx.next_poll_at(now, size=job.counts.total, age_seconds=0, failures=job.poll_failures)

    try:
        ctx.jobs.update(job_id, back_off)
    except (TransientError, PermanentError):
        log.warning("could not record the poll failure", exc_info=True)
