"""Leases: one worker at a time on a job, or on a shard, across functions and instances.

A lease is an owner id and an expiry written on the document in a transaction. Every save made under a
lease is fenced: it fails with `LeaseLost` if another worker took the document over meanwhile (after this
one's lease expired), so a slow worker can never overwrite a newer one's work. A save writes only what this
worker changed since it read the document (`shared.domain.changes`): what others wrote meanwhile without
the lease (a cancel request, counters moved by a closing shard, a poll time) stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.domain.changes import apply_changes, changes_since, snapshot
from shared.domain.jobs import COUNTER_FIELDS, Job, Shard
from shared.errors import TransientError
from shared.ports import JobTx
from shared.services.context import Context

T = TypeVar("T")

__all__ = ["LeaseHeld", "LeaseLost", "ShardMoved", "commit", "lease_left", "leased", "leased_shard", "renew", "save",
           "save_shard"]


class LeaseHeld(TransientError):
    """Another worker holds the job or shard; try again later."""

    code = "LEASE_HELD"


class LeaseLost(TransientError):
    """This worker's lease expired and another took the document: stop, the other one carries on."""

    code = "LEASE_LOST"


def _expiry(ctx: Context) -> datetime:
    return ctx.clock() + timedelta(seconds=ctx.settings.lease_seconds)


def _take(ctx: Context, doc: Job | Shard) -> bool:
    if doc.leased_by_other(ctx.owner, ctx.clock()):
        return False
    doc.lease_owner = ctx.owner
    doc.lease_until = _expiry(ctx)
    return True


def _merge(mine: BaseModel, stored: BaseModel, *, last: bool, ctx: Context, what: str) -> None:
    """Apply my changes since my base onto `stored` (in a transaction), fenced by my lease."""
    if stored.lease_owner != ctx.owner:
        raise LeaseLost(f"{what}: lease taken over by another worker")
    changed = changes_since(mine._base, snapshot(mine))
    counters = [path for path in changed if path in COUNTER_FIELDS]
    if isinstance(mine, Job) and counters:
        raise AssertionError(f"{what}: counters {counters} change only with the shard that moves them")
    merged = apply_changes(snapshot(stored), changed)
    merged["lease_owner"] = None if last else ctx.owner
    merged["lease_until"] = None if last else _expiry(ctx)
    merged["updated_at"] = ctx.clock()
    stored.__dict__.update(type(stored).model_validate(merged).__dict__)


def _adopt(mine: BaseModel, stored: BaseModel) -> None:
    """My copy becomes the stored document, which is my new base."""
    mine.__dict__.update(stored.model_copy(deep=True).__dict__)
    mine._base = snapshot(mine)


def lease_left(doc: Job | Shard, ctx: Context) -> float:
    """Seconds this worker's lease has left (0 when it holds none)."""
    if doc.lease_owner != ctx.owner or doc.lease_until is None:
        return 0.0
    return max((doc.lease_until - ctx.clock()).total_seconds(), 0.0)


# -- jobs ------------------------------------------------------------------------------------------------


def commit(ctx: Context, job: Job, change: Callable[[JobTx], T] | None = None, *, shards: Iterable[int] = (),
           last: bool = False) -> T | None:
    """One transaction as the job's lease holder: write what this worker changed on `job`, then apply
    `change` to the stored job and the `shards` named (moving counters, adding shards), and renew the lease.
    `job` then holds the stored document. Raises `LeaseLost` when another worker has taken the job over.

    `last`: the final write of this lease, which it releases in the same write (one write fewer).
    """
    def write(tx: JobTx) -> T | None:
        _merge(job, tx.job, last=last, ctx=ctx, what=f"job {job.job_id}")
        return change(tx) if change is not None else None

    tx, result = ctx.jobs.update(job.job_id, write, shards=shards)
    _adopt(job, tx.job)
    return result


def save(ctx: Context, job: Job, *, last: bool = False) -> Job:
    """Write what this worker changed on `job` and renew the lease (see `commit`)."""
    commit(ctx, job, last=last)
    return job


def renew(ctx: Context, job: Job) -> None:
    """Extend this worker's lease on the job during long work (raises `LeaseLost` if it was taken over)."""
    commit(ctx, job)


@contextmanager
def leased(ctx: Context, job_id: str) -> Iterator[Job]:
    """Hold the job's lease for the block; raises `LeaseHeld` when another live worker has it.

    The lease is released on the way out, also on errors, unless a `save(..., last=True)` released it;
    unsaved changes to the yielded job are lost.
    """
    tx, taken = ctx.jobs.update(job_id, lambda tx: _take(ctx, tx.job))
    if not taken:
        raise LeaseHeld(f"job {job_id} is being worked on by another worker")
    job = tx.job
    job._base = snapshot(job)
    try:
        yield job
    finally:
        if job.lease_owner == ctx.owner:
            def clear(tx: JobTx) -> None:
                _clear(ctx, tx.job)

            _quietly(lambda: ctx.jobs.update(job_id, clear))


def _clear(ctx: Context, doc: Job | Shard) -> None:
    if doc.lease_owner == ctx.owner:
        doc.lease_owner = None
        doc.lease_until = None


def _quietly(release: Callable[[], Any]) -> None:
    """Release a lease if the store lets us now; otherwise it lapses on its own."""
    with suppress(TransientError):
        release()


# -- shards ----------------------------------------------------------------------------------------------


class ShardMoved(LeaseLost):
    """Another worker moved the shard to another state meanwhile (a cancel, a deadline): my step is void."""

    code = "SHARD_MOVED"


def save_shard(ctx: Context, shard: Shard, *, last: bool = False) -> Shard:
    """As `save`, for a shard held under its own lease. Raises `ShardMoved` when another worker changed its
    state meanwhile (only the lease holder and whoever ends the job move a leased shard)."""
    def write(stored: Shard) -> None:
        if stored.state != shard._base["state"]:
            raise ShardMoved(f"shard {shard.job_id}/{shard.index} is now {stored.state}")
        _merge(shard, stored, last=last, ctx=ctx, what=f"shard {shard.job_id}/{shard.index}")

    stored, _ = ctx.jobs.update_shard(shard.job_id, shard.index, write)
    _adopt(shard, stored)
    return shard


@contextmanager
def leased_shard(ctx: Context, job_id: str, index: int) -> Iterator[Shard]:
    """Hold one shard's lease for the block (as `leased`)."""
    stored, taken = ctx.jobs.update_shard(job_id, index, lambda shard: _take(ctx, shard))
    if not taken:
        raise LeaseHeld(f"shard {job_id}/{index} is being worked on by another worker")
    shard = stored
    shard._base = snapshot(shard)
    try:
        yield shard
    finally:
        if shard.lease_owner == ctx.owner:
            _quietly(lambda: ctx.jobs.update_shard(job_id, index, lambda stored: _clear(ctx, stored)))
