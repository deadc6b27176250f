"""Poll: the scheduler's tick fans due work out to poll workers, and the workers move it one step.

The tick (Cloud Scheduler, every minute) does bounded work of its own and nothing per item:
- due shards (one query: batches to refresh, creates or writes that may have been lost) and due jobs (one
  query: deadlines, cancels, stalled staging, unfinished or unannounced ends) go out as messages, a group
  per message, each carrying the documents as the query read them;
- each ledger reclaims capacity held by nobody, then admits the head of its queue;
- the reconciler looks at one page of recent uploads for objects without a job.
A worker reads nothing again: it writes a due document over the revision the tick read, so a document
written meanwhile (by its lease holder, or another worker) is left to that writer. Per due item it costs
the tick's read and one write. Steps that must not run twice (creating, writing, cancelling, ending) take
the document's lease.

A shard's step, by state:
- PENDING/RUNNING: refresh from the provider. When the batch ends: SUCCEEDED hands the shard to `complete`;
  FAILED/EXPIRED/CANCELLED retries it (it waits for capacity again) while attempts remain, else abandons
  it. Either way its batch's capacity is released and the queue admitted at once.
- CREATING past its mark: the creator died or its message was lost: create (or recover) it now.
- SUCCEEDED left unwritten: hand it to `complete` again.
A job's step: publish an unannounced end; carry out a cancel; stop everything at the deadline; hand
stalled staging back to `stage` (never staged inline); finish a COMPLETING job left unfinished.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.domain.jobs import (
    SHARD_IN_FLIGHT,
    SHARD_PROVIDER_ENDED,
    ErrorInfo,
    Job,
    JobState,
    Shard,
    ShardState,
)
from shared.errors import PermanentError, TransientError
from shared.logging import bind, get_logger
from shared.ports import ProviderBatch
from shared.services import messages
from shared.services.admission import admit
from shared.services.batches import (
    abandon_shard,
    adopt,
    cancel_strays,
    create_batch_for,
    get_batch,
    provider_of,
    release_capacity,
    resolve_by_tag,
)
from shared.services.cancel import stop_held, stop_shards
from shared.services.context import Context
from shared.services.finish import end_job, finalize, publish_completion
from shared.services.leasing import LeaseHeld, leased, save
from shared.services.reconcile import reconcile_inputs, reconcile_ledger

__all__ = ["PollSummary", "poll_batch", "poll_job", "poll_shard", "poll_work", "tick"]

log = get_logger(__name__)

#: How long after its deadline a job may still be completing before it is failed (complete keeps failing).
COMPLETION_GRACE = timedelta(hours=24)
#: A running job with nothing due is still looked at this often (a safety net; its deadline comes first).
JOB_HEARTBEAT = timedelta(hours=1)


@dataclass
class PollSummary:
    due_shards: int = 0
    due_jobs: int = 0
    messages: int = 0
    admitted: int = 0
    reclaimed: int = 0
    reconciled: int = 0
    polled: int = 0
    progressed: int = 0  # shards whose batches moved since their last poll
    handed_to_complete: int = 0
    retried: int = 0
    abandoned: int = 0
    created: int = 0
    skipped: int = 0  # written or leased by another worker meanwhile
    errors: int = 0
    seconds: float = 0.0
    job_errors: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- the tick -------------------------------------------------------------------------------------------


def tick(ctx: Context) -> PollSummary:
    """One scheduler tick: fan due work out, admit waiting work, reconcile. Bounded by counts."""
    started = time.monotonic()
    settings = ctx.settings
    summary = PollSummary()
    now = ctx.clock()
    shards = ctx.jobs.due_shards(now, settings.poll_max_shards)
    jobs = ctx.jobs.due(now, settings.poll_max_jobs)
    summary.due_shards, summary.due_jobs = len(shards), len(jobs)
    summary.messages = messages.poll_shards(ctx, shards) + messages.poll_jobs(ctx, jobs)
    for key in ctx.ledgers.list_keys():
        _guarded(summary, key, lambda key=key: _admit_ledger(ctx, key, summary))
    _guarded(summary, "reconcile", lambda: setattr(summary, "reconciled", reconcile_inputs(ctx)))
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("poll tick", **{k: v for k, v in summary.to_dict().items() if k != "job_errors"})
    return summary


def _admit_ledger(ctx: Context, key: str, summary: PollSummary) -> None:
    summary.reclaimed += reconcile_ledger(ctx, key)
    summary.admitted += admit(ctx, key, inline=False)


def _guarded(summary: PollSummary, what: str, step: Any) -> None:
    """One item's error never stops the run."""
    try:
        step()
    except LeaseHeld:
        summary.skipped += 1
    except Exception as exc:  # noqa: BLE001
        summary.errors += 1
        summary.job_errors.append({"item": what, "error": type(exc).__name__, "message": str(exc)[:300]})
        log.warning("poll step failed", item=what, exc_info=True)


# -- the worker ------------------------------------------------------------------------------------------


def poll_work(ctx: Context, payload: dict[str, Any]) -> PollSummary:
    """Handle one message of the poll topic (see `shared.services.messages`)."""
    summary = PollSummary()
    for snapshot in payload.get("shards", []):
        shard = messages.from_snapshot(Shard, snapshot)
        with bind(job_id=shard.job_id, shard=shard.index):
            _guarded(summary, f"{shard.job_id}/{shard.index}", lambda s=shard: _count(summary, poll_shard(ctx.for_invocation(), s)))
    for snapshot in payload.get("jobs", []):
        job = messages.from_snapshot(Job, snapshot)
        with bind(job_id=job.job_id):
            _guarded(summary, job.job_id, lambda j=job: _count(summary, poll_job(ctx.for_invocation(), j)))
    for name in payload.get("batches", []):
        with bind(batch=name):
            _guarded(summary, name, lambda n=name: _count(summary, poll_batch(ctx.for_invocation(), n)))
    for job_id, index in payload.get("create", []):
        with bind(job_id=job_id, shard=index):
            _guarded(summary, f"{job_id}/{index}",
                     lambda j=job_id, i=index: _count(summary, create_batch_for(ctx.for_invocation(), j, i)))
    for error in summary.job_errors:
        _note_failure(ctx, error)
    return summary


def _count(summary: PollSummary, step: str) -> None:
    summary.polled += 1
    summary.progressed += step == "progressed"
    summary.handed_to_complete += step == "handed_to_complete"
    summary.retried += step == "retried"
    summary.abandoned += step == "abandoned"
    summary.created += step in ("created", "recovered")
    summary.skipped += step == "skipped"


# -- shards ----------------------------------------------------------------------------------------------


def poll_shard(ctx: Context, shard: Shard) -> str:
    """Move one due shard (as the tick read it) one step; returns what was done."""
    now = ctx.clock()
    if shard.strays or (shard.stray_tags and shard.state != ShardState.CREATING):
        cancel_strays(ctx, shard)  # no lease needed: a cancel is idempotent; the shard stays due for its step
        return "strays_cancelled"
    if shard.leased_by_other(ctx.owner, now) and shard.state != ShardState.CREATING:
        return "skipped"
    if shard.state == ShardState.CREATING:
        return create_batch_for(ctx, shard.job_id, shard.index)
    if shard.state in SHARD_IN_FLIGHT and shard.batch_name:
        return _refresh(ctx, shard, get_batch(ctx, shard))
    if shard.state == ShardState.SUCCEEDED or shard.state in SHARD_PROVIDER_ENDED:
        return batch_ended(ctx, shard)  # again (its end's handling was interrupted, or its write is stale)
    shard.next_poll_at = None  # nothing to look after (waiting for capacity, or final)
    ctx.jobs.replace_shard_if_unchanged(shard)
    return "unchanged"


def poll_batch(ctx: Context, name: str) -> str:
    """A batch a webhook says ended: poll its shard now (a batch of no shard of ours is ignored)."""
    shard = ctx.jobs.shard_of_batch(name)
    if shard is None:
        return "unknown_batch"
    return poll_shard(ctx, shard)


def _refresh(ctx: Context, shard: Shard, batch: ProviderBatch) -> str:
    now = ctx.clock()
    before = (shard.state, shard.succeeded, shard.failed, shard.pending)
    adopt(shard, batch, now)
    if shard.state in SHARD_IN_FLIGHT:
        shard.next_poll_at = _next_poll(ctx, shard, now)
        if not ctx.jobs.replace_shard_if_unchanged(shard):
            return "skipped"
        return "progressed" if (shard.state, shard.succeeded, shard.failed, shard.pending) != before else "unchanged"
    return batch_ended(ctx, shard)


def batch_ended(ctx: Context, shard: Shard) -> str:
    """The shard's batch reached a terminal state (seen by a poll, a webhook or a recovery, adopted on
    `shard`): store that, delete its input, free its batch's capacity, and take the next step. Idempotent:
    a shard seen ended again (an interrupted pass, a stale write) goes through it again harmlessly."""
    now = ctx.clock()
    if shard.uncertain_create:
        resolve_by_tag(ctx, provider_of(ctx, shard), shard, keep=False)  # a stray second batch, if any
        shard.uncertain_create = False
    succeeded = shard.state == ShardState.SUCCEEDED
    input_ref, shard.input_ref = shard.input_ref, None
    shard.next_poll_at = now + timedelta(minutes=ctx.settings.complete_stale_minutes) if succeeded else now
    if not ctx.jobs.replace_shard_if_unchanged(shard):
        return "skipped"
    _ended(ctx, shard, input_ref, keep_files=succeeded)
    if succeeded:
        messages.write_shard(ctx, shard.job_id, shard.index)
        return "handed_to_complete"
    return _retry_or_abandon(ctx, shard)


def _ended(ctx: Context, shard: Shard, input_ref: str | None, *, keep_files: bool) -> None:
    """After the shard's move is stored: delete its input, free its batch's capacity, admit the queue."""
    if input_ref:
        try:
            provider_of(ctx, shard).delete_input(input_ref)
        except Exception:  # noqa: BLE001 - inputs expire on their own
            log.warning("could not delete a batch input", shard=shard.index, exc_info=True)
    release_capacity(ctx, shard, batch_only=keep_files)
    try:
        admit(ctx, shard.ledger, inline=True)
    except Exception:  # noqa: BLE001 - the next tick admits
        log.warning("admission after a batch ended failed", ledger=shard.ledger, exc_info=True)


def _retry_or_abandon(ctx: Context, shard: Shard) -> str:
    """A batch the provider ended without results: the shard waits for capacity again while attempts remain
    (a new batch attempt: a new tag), else it is abandoned."""
    now = ctx.clock()
    job = ctx.jobs.get(shard.job_id)
    stopping = job is None or not job.active or job.stopping or job.past_deadline(now)
    if shard.batch_attempts < ctx.settings.max_batch_attempts and not stopping:
        log.warning("retrying a batch the provider ended without results", state=shard.state.value,
                    attempt=shard.batch_attempts)
        shard.move_to(ShardState.STAGED, now)
        shard.batch_attempts += 1
        shard.batch_name = shard.input_ref = shard.create_started_at = None
        shard.reservation = None
        shard.uncertain_create = False
        shard.next_poll_at = None
        if not ctx.jobs.replace_shard_if_unchanged(shard):
            return "skipped"
        admit(ctx, shard.ledger, inline=True)
        return "retried"
    error = shard.provider_error or ErrorInfo(code=shard.state.value, message=f"the provider ended the batch {shard.state.value}")
    if abandon_shard(ctx, shard, error, states=[shard.state]):
        messages.finish_job(ctx, shard.job_id)
    return "abandoned"


def _next_poll(ctx: Context, shard: Shard, now: datetime) -> datetime:
    age = (now - (shard.create_started_at or shard.created_at)).total_seconds()
    return ctx.next_poll_at(now, size=shard.request_count, age_seconds=age, seconds_left=_seconds_left(shard, now))


def _seconds_left(shard: Shard, now: datetime) -> float | None:
    """When the batch should end at the pace it has kept since its creation; None before any progress."""
    done = shard.succeeded + shard.failed
    if not done or shard.create_started_at is None:
        return None
    return (now - shard.create_started_at).total_seconds() * shard.pending / done


# -- jobs ------------------------------------------------------------------------------------------------


def poll_job(ctx: Context, job: Job) -> str:
    """Move one due job (as the tick read it) one step; returns what was done."""
    now = ctx.clock()
    if job.leased_by_other(ctx.owner, now):
        return "skipped"
    if job.terminal or job.stopping or (job.active and job.past_deadline(now)):
        return _under_lease(ctx, job.job_id)
    if job.state == JobState.SUBMITTING:
        return _reschedule(ctx, job, now, ctx.settings.submit_stale_minutes, messages.stage_job, "handed_to_stage")
    if job.state == JobState.COMPLETING:
        return _reschedule(ctx, job, now, ctx.settings.complete_stale_minutes, messages.finish_job, "handed_to_complete")
    job.next_poll_at = min(job.deadline_at or now + JOB_HEARTBEAT, now + JOB_HEARTBEAT)
    job.complete_if_done(now)
    if not ctx.jobs.replace_if_unchanged(job):
        return "skipped"
    if job.state == JobState.COMPLETING:
        messages.finish_job(ctx, job.job_id)
        return "handed_to_complete"
    if job.staging.held and not job.staging.opened:  # putting its shards in the queue was interrupted
        messages.stage_job(ctx, job.job_id)
        return "handed_to_stage"
    return "unchanged"


def _reschedule(ctx: Context, job: Job, now: datetime, minutes: float, send: Any, step: str) -> str:
    if now - job.updated_at < timedelta(minutes=minutes):
        job.next_poll_at = job.updated_at + timedelta(minutes=minutes)
        return "unchanged" if ctx.jobs.replace_if_unchanged(job) else "skipped"
    job.next_poll_at = now + timedelta(minutes=minutes)
    job.updated_at = now
    if not ctx.jobs.replace_if_unchanged(job):
        return "skipped"
    send(ctx, job.job_id)
    return step


def _under_lease(ctx: Context, job_id: str) -> str:
    """The steps that must not run twice: announce, cancel, stop at the deadline, fail overdue."""
    with leased(ctx, job_id) as job:
        now = ctx.clock()
        if job.terminal:
            publish_completion(ctx, job)
            return "event_published"
        if job.stopping:
            return "stopped" if stop_held(ctx, job) else "stopping"
        if job.state == JobState.COMPLETING:
            if job.deadline_at is not None and now >= job.deadline_at + COMPLETION_GRACE:
                end_job(ctx, job, JobState.FAILED, error=ErrorInfo(
                    code="COMPLETION_FAILED", message="the results could not be written in time" + _last(job)))
                return "failed_overdue"
            finalize(ctx, job)  # its finish message may be lost: past its deadline no reschedule sends another
            return "finished"
        error = ErrorInfo(code="DEADLINE_EXCEEDED", message="the job passed its deadline")
        ready_kept = job.deadline_at is not None and now < job.deadline_at + COMPLETION_GRACE
        if not stop_shards(ctx, job, error, keep_ready=ready_kept):
            return "stopping"
        if job.state == JobState.SUBMITTING or job.counts.total == 0:
            end_job(ctx, job, JobState.FAILED, error=ErrorInfo(
                code="DEADLINE_EXCEEDED", message="the submission did not complete before the job's deadline" + _last(job)))
            return "failed_overdue"
        save(ctx, job)  # my copy takes what the shards' closing did to the job
        if job.state == JobState.COMPLETING:
            finalize(ctx, job)
        return "stopped_at_deadline"


def _last(job: Job) -> str:
    return f" (last error: {job.last_error.message})" if job.last_error else ""


def _note_failure(ctx: Context, error: dict) -> None:
    """Back a failing job off, and the shard whose step failed, so neither is hammered every tick."""
    job_id, _, index = error["item"].partition("/")
    if not job_id.startswith("job-"):
        return
    now = ctx.clock()

    def back_off(tx) -> int:
        job = tx.job
        job.poll_failures += 1
        job.last_error = ErrorInfo(code=error["error"], message=error["message"], at=now)
        if job.next_poll_at is not None:
            job.next_poll_at = ctx.next_poll_at(now, size=job.counts.total, age_seconds=0, failures=job.poll_failures)
        return job.poll_failures

    def back_off_shard(shard: Shard) -> None:
        if shard.next_poll_at is not None and not shard.final and not shard.leased_by_other(ctx.owner, now):
            shard.next_poll_at = ctx.next_poll_at(now, size=shard.request_count, age_seconds=0, failures=failures)

    try:
        _, failures = ctx.jobs.update(job_id, back_off)
        if index.isdigit():
            ctx.jobs.update_shard(job_id, int(index), back_off_shard)
    except (TransientError, PermanentError):
        log.warning("could not record the poll failure", exc_info=True)
