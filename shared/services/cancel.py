"""Cancel: stop a job's batches and end it CANCELLED, with its event.

A cancel request is recorded on the job first (that write needs no lease), then carried out at once if
the job is free, or by whichever worker holds it next (poller or complete check the request). Cancelling
an ended job changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.jobs import SHARD_IN_FLIGHT, ErrorInfo, Job, JobState, ShardState
from shared.services.batches import stop_batch
from shared.services.context import Context
from shared.services.finish import end_job
from shared.services.leasing import LeaseHeld, leased

__all__ = ["CancelResult", "cancel_held", "cancel_job"]

@dataclass(frozen=True)
class CancelResult:
    job_id: str
    state: str
    cancelled: bool  # ended CANCELLED by this call or earlier
    message: str


def cancel_job(ctx: Context, job_id: str) -> CancelResult:
    """Request and, when possible, carry out the job's cancellation. Raises NotFound for an unknown job."""
    now = ctx.clock()

    def request(job: Job) -> None:
        if job.active:
            job.cancel_requested = True
            job.next_poll_at = now  # the poller carries it out if the holder of the lease does not

    job, _ = ctx.jobs.update(job_id, request)
    if job.terminal:
        return CancelResult(job_id, job.state.value, job.state == JobState.CANCELLED, f"the job already ended {job.state.value}")
    try:
        with leased(ctx, job_id) as held:
            if held.terminal:
                return CancelResult(job_id, held.state.value, held.state == JobState.CANCELLED, f"the job ended {held.state.value}")
            cancel_held(ctx, held)
            return CancelResult(job_id, held.state.value, True, "cancelled")
    except LeaseHeld:
        return CancelResult(job_id, job.state.value, False, "cancel requested: the job is busy and will be cancelled shortly")


def cancel_held(ctx: Context, job: Job) -> None:
    """Cancel the batches of a job held under lease and end it CANCELLED."""
    for shard in job.shards:
        if shard.batch_name and shard.state in SHARD_IN_FLIGHT:  # a CREATING shard has no batch name yet
            stop_batch(ctx, shard.batch_name)
            shard.state = ShardState.CANCELLED
    end_job(ctx, job, JobState.CANCELLED, error=ErrorInfo(code="CANCELLED", message="cancelled by request"))
