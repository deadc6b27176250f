"""Cancel, and any other end that stops a job's work: every open shard is resolved, then the job ends.

A cancel request is recorded on the job first (that write needs no lease), then carried out at once if
the job is free, or by whichever worker holds it next (they all check the request). Stopping a job's work
(`stop_shards`, also used at the deadline and when a submission fails): for each open shard, a CREATING one
is first resolved by its tag (a create may have reached the provider while its answer was lost: every batch
carrying the tag is cancelled), a running batch is cancelled, and the shard is abandoned with its capacity
released. A shard under another worker's lease is left for the next pass (the job stays due); a worker that
creates a batch for a shard abandoned meanwhile cancels it itself (`shared.services.batches`). Cancelling an
ended job changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.jobs import FINAL_SHARD_STATES, SHARD_IN_FLIGHT, ErrorInfo, Job, JobState, ShardState
from shared.errors import TransientError
from shared.logging import get_logger
from shared.services.batches import abandon_shard, cancel_strays, provider_of, resolve_by_tag, stop_batch
from shared.services.context import Context
from shared.services.finish import end_job
from shared.services.leasing import LeaseHeld, leased, save

__all__ = ["CancelResult", "cancel_job", "stop_held", "stop_shards"]

log = get_logger(__name__)

_OPEN_STATES = [s.value for s in ShardState if s not in FINAL_SHARD_STATES]


@dataclass(frozen=True)
class CancelResult:
    job_id: str
    state: str
    cancelled: bool  # ended CANCELLED by this call or earlier
    message: str


def cancel_job(ctx: Context, job_id: str) -> CancelResult:
    """Request and, when possible, carry out the job's cancellation. Raises NotFound for an unknown job."""
    now = ctx.clock()

    def request(tx) -> None:
        if tx.job.active:
            tx.job.cancel_requested = True
            tx.job.next_poll_at = now  # the poller carries it out if the holder of the lease does not

    tx, _ = ctx.jobs.update(job_id, request)
    job = tx.job
    if job.terminal:
        return CancelResult(job_id, job.state.value, job.state == JobState.CANCELLED, f"the job already ended {job.state.value}")
    try:
        with leased(ctx, job_id) as held:
            if held.terminal:
                return CancelResult(job_id, held.state.value, held.state == JobState.CANCELLED, f"the job ended {held.state.value}")
            try:
                if stop_held(ctx, held):
                    return CancelResult(job_id, held.state.value, held.state == JobState.CANCELLED,
                                        f"the job ended {held.state.value}")
            except TransientError:
                log.warning("cancel under way: a step failed and will be retried", job_id=job_id, exc_info=True)
            return CancelResult(job_id, held.state.value, False, "cancel under way: the poller finishes it shortly")
    except LeaseHeld:
        return CancelResult(job_id, job.state.value, False, "cancel requested: the job is busy and will be cancelled shortly")


def stop_held(ctx: Context, job: Job) -> bool:
    """Carry out the stop asked of a job held under lease: a failed submission ends FAILED with its error,
    a cancel CANCELLED. False when some shard was busy or time ran out: the request stays on the job, which
    stays due, and a later pass (the poller's, any delivery's) finishes it."""
    if job.failing is not None:
        state, error = JobState.FAILED, job.failing
    else:
        state, error = JobState.CANCELLED, ErrorInfo(code="CANCELLED", message="cancelled by request")
    if not stop_shards(ctx, job, error):
        job.next_poll_at = ctx.clock()
        save(ctx, job, last=True)
        return False
    save(ctx, job)  # my copy takes what the shards' closing did to the job
    end_job(ctx, job, state, error=error)
    return True


def stop_shards(ctx: Context, job: Job, error: ErrorInfo, *, keep_ready: bool = False) -> bool:
    """Resolve and abandon every open shard of `job` (see the module docstring). True when none is left
    open; False when one was under another worker's lease, or the time budget ran out. With `keep_ready`
    (the deadline), shards whose batch SUCCEEDED are left to be written: their results are paid for."""
    now = ctx.clock()
    for shard in ctx.jobs.shards(job.job_id, states=_OPEN_STATES):
        if ctx.elapsed() > ctx.settings.stage_budget_seconds:
            return False
        if shard.leased_by_other(ctx.owner, now) or (keep_ready and shard.state == ShardState.SUCCEEDED):
            continue
        if shard.ledger == "" and shard.state == ShardState.STAGED:  # held out of the queue: never had a batch
            abandon_shard(ctx, shard, error, states=[shard.state])
            continue
        provider = provider_of(ctx, shard)
        batch = shard.batch_name
        if shard.strays or shard.stray_tags:
            cancel_strays(ctx, shard, stopping=True)
        if shard.state == ShardState.CREATING and shard.create_started_at is not None:
            found = resolve_by_tag(ctx, provider, shard, keep=True)  # the others are cancelled
            batch = found.name if found is not None else None
            if found is not None and not found.terminal:
                stop_batch(ctx, provider, found.name)
        elif shard.uncertain_create and shard.create_started_at is not None:
            resolve_by_tag(ctx, provider, shard, keep=False)  # its batch and any stray second one
        elif shard.state in SHARD_IN_FLIGHT and batch:
            stop_batch(ctx, provider, batch)
        # the batch it made, whatever became of it, stays named on the shard; moved meanwhile: next pass
        abandon_shard(ctx, shard, error, states=[shard.state], batch=batch)
    stored = ctx.jobs.get(job.job_id)
    return stored is not None and stored.open_shards == 0
