"""Leases: one worker at a time on a job, across functions and instances.

A lease is an owner id and an expiry written on the job document in a transaction. Every save made under
a lease is fenced: it fails with `LeaseLost` if another worker took the job over meanwhile (after this
one's lease expired), so a slow worker can never overwrite a newer one's work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from shared.domain.jobs import Job
from shared.errors import TransientError
from shared.services.context import Context

__all__ = ["LeaseHeld", "LeaseLost", "leased", "renew", "save"]


class LeaseHeld(TransientError):
    """Another worker holds the job; try again later."""

    code = "LEASE_HELD"


class LeaseLost(TransientError):
    """This worker's lease expired and another took the job: stop, the other one carries on."""

    code = "LEASE_LOST"


def _acquire(ctx: Context, job_id: str) -> Job | None:
    now = ctx.clock()

    def take(job: Job) -> bool:
        if job.leased_by_other(ctx.owner, now):
            return False
        job.lease_owner = ctx.owner
        job.lease_until = now + timedelta(seconds=ctx.settings.lease_seconds)
        return True

    job, taken = ctx.jobs.update(job_id, take)
    return job if taken else None


def save(ctx: Context, job: Job, *, last: bool = False) -> Job:
    """Write `job` as this worker sees it and renew the lease; keeps a cancel request made meanwhile.

    `last`: the final write of this lease, which it releases in the same write (one write fewer).
    """
    now = ctx.clock()

    def write(stored: Job) -> Job:
        if stored.lease_owner != ctx.owner:
            raise LeaseLost(f"job {job.job_id}: lease taken over by another worker")
        job.cancel_requested = job.cancel_requested or stored.cancel_requested
        job.lease_owner = None if last else ctx.owner
        job.lease_until = None if last else now + timedelta(seconds=ctx.settings.lease_seconds)
        job.updated_at = now
        stored.__dict__.update(job.__dict__)  # the whole document, as this worker holds it
        return stored

    stored, _ = ctx.jobs.update(job.job_id, write)
    job.cancel_requested = stored.cancel_requested
    return job


def _release(ctx: Context, job_id: str) -> None:
    def clear(stored: Job) -> None:
        if stored.lease_owner == ctx.owner:
            stored.lease_owner = None
            stored.lease_until = None

    ctx.jobs.update(job_id, clear)


@contextmanager
def leased(ctx: Context, job_id: str) -> Iterator[Job]:
    """Hold the job's lease for the block; raises `LeaseHeld` when another live worker has it.

    The lease is released on the way out, also on errors, unless a `save(..., last=True)` released it;
    unsaved changes to the yielded job are lost.
    """
    job = _acquire(ctx, job_id)
    if job is None:
        raise LeaseHeld(f"job {job_id} is being worked on by another worker")
    try:
        yield job
    finally:
        if job.lease_owner == ctx.owner:
            _release(ctx, job_id)


def renew(ctx: Context, job_id: str) -> None:
    """Extend this worker's lease during long work (raises `LeaseLost` if it was taken over)."""
    now = ctx.clock()

    def extend(stored: Job) -> None:
        if stored.lease_owner != ctx.owner:
            raise LeaseLost(f"job {job_id}: lease taken over by another worker")
        stored.lease_until = now + timedelta(seconds=ctx.settings.lease_seconds)

    ctx.jobs.update(job_id, extend)
