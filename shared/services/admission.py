"""Admission: waiting shards get capacity through their ledger, head of the queue first.

The queue is a query (STAGED shards of one ledger by priority, then fair key, then age): no scan of jobs.
For each shard at the head: reserve in the ledger (a transaction), then mark the shard CREATING (another);
the ledger first, so a crash in between leaves capacity reserved for nobody, which reconciliation
reclaims, and never a shard creating without capacity. A shard larger than the ledger's limit is split.
Admitted shards get their batches at once in this invocation (submit, complete: the work just staged or
freed) or through a message per group (the poller's tick). A shard admitted and never created is due when
its CREATING mark lapses, and the poller creates it then.
"""

from __future__ import annotations

from datetime import timedelta

from shared.domain.capabilities import Capabilities
from shared.domain.jobs import Job, Shard, ShardOrigin, ShardState
from shared.domain.ledger import Admission, Ledger
from shared.domain.paths import JobPaths
from shared.errors import TransientError
from shared.logging import get_logger
from shared.services import messages
from shared.services.batches import close_shard, create_batch_for, release_capacity
from shared.services.context import Context
from shared.services.records import write_subset

__all__ = ["admit", "configure_ledger", "split_shard"]

log = get_logger(__name__)


def configure_ledger(ledger: Ledger, ctx: Context, capabilities: Capabilities) -> None:
    """The ledger's caps: the settings where set, else the provider's published quotas."""
    settings, quotas = ctx.settings, capabilities.quotas
    ledger.configure(
        settings.enqueued_tokens_limit if settings.enqueued_tokens_limit is not None else quotas.enqueued_tokens,
        settings.concurrent_batches_limit if settings.concurrent_batches_limit is not None else quotas.concurrent_batches,
        settings.file_storage_limit_bytes if settings.file_storage_limit_bytes is not None else quotas.file_storage_bytes,
    )


def ledger_capabilities(ctx: Context, key: str) -> Capabilities:
    provider, model = key.split("~", 1)
    return ctx.capabilities(provider, model)


def admit(ctx: Context, key: str, *, inline: bool) -> int:
    """Admit the head of ledger `key`'s queue while it has room; returns how many shards were admitted.
    No ledger (a shard held out of the queue, or found in the cache) admits nothing."""
    if not key:
        return 0
    capabilities = ledger_capabilities(ctx, key)
    now = ctx.clock()
    admitted: list[tuple[str, int]] = []
    for shard in ctx.jobs.waiting_shards(key, ctx.settings.admit_max_per_tick):
        def reserve(ledger: Ledger, shard: Shard = shard) -> tuple[Admission, str | None]:
            configure_ledger(ledger, ctx, capabilities)
            return ledger.admit(shard.job_id, shard.index, shard.estimated_tokens, shard.file_bytes,
                                shard.fair_key, now, splittable=shard.request_count > 1)

        _, (result, reservation) = ctx.ledgers.update(key, reserve)
        if result == Admission.WAIT:
            break
        if result == Admission.TOO_LARGE:
            ctx.ledgers.update(key, lambda ledger, t=shard.estimated_tokens: ledger.too_large(t, now))
            split_shard(ctx, shard)
            continue
        if _mark_creating(ctx, shard, reservation):
            admitted.append((shard.job_id, shard.index))
        else:  # it moved meanwhile (cancelled, admitted by another worker): free what was reserved for it
            release_capacity(ctx, shard.model_copy(update={"reservation": reservation}))
    if admitted:
        log.info("admitted shards", ledger=key, shards=len(admitted))
        _create(ctx, admitted, inline=inline)
    return len(admitted)


def _mark_creating(ctx: Context, shard: Shard, reservation: str | None) -> bool:
    now = ctx.clock()

    def mark(stored: Shard) -> bool:
        if stored.state != ShardState.STAGED:
            return False
        stored.move_to(ShardState.CREATING, now)
        stored.reservation = reservation
        stored.create_started_at = None
        # Due when a creator should long have finished: the poller then creates it (or recovers it).
        stored.next_poll_at = now + timedelta(seconds=ctx.settings.lease_seconds)
        return True

    _, moved = ctx.jobs.update_shard(shard.job_id, shard.index, mark)
    return moved


def _create(ctx: Context, admitted: list[tuple[str, int]], *, inline: bool) -> None:
    handed: list[tuple[str, int]] = []
    for job_id, index in admitted:
        if inline and ctx.elapsed() < ctx.settings.stage_budget_seconds:
            try:
                create_batch_for(ctx.for_invocation(), job_id, index)
                continue
            except TransientError as exc:  # its CREATING mark makes it due: the poller takes it from here
                log.warning("create deferred", job_id=job_id, shard=index, error=str(exc))
                continue
        handed.append((job_id, index))
    if handed:
        messages.create_batches(ctx, handed)


def split_shard(ctx: Context, shard: Shard) -> bool:
    """Replace a STAGED shard too large for the provider's real cap by two halves (by tokens), in one
    transaction. A shard of one item cannot be split: it keeps waiting."""
    if shard.request_count < 2:
        log.warning("a one-item shard is over the capacity: it waits", shard=shard.index, tokens=shard.estimated_tokens)
        return False
    job = ctx.jobs.get(shard.job_id)
    if job is None:
        return False
    paths = JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix)
    half, seen = shard.estimated_tokens / 2, 0

    def in_first(row: dict) -> bool:
        nonlocal seen
        before, seen = seen, seen + row.get("tokens", 0)
        return before < half

    first = write_subset(ctx, shard.records_uri, paths.split_records(shard.index, 0), in_first)
    second = write_subset(ctx, shard.records_uri, paths.split_records(shard.index, 1),
                          lambda row: int(row["key"]) > first.last_key)
    now = ctx.clock()
    result_bytes = shard.file_bytes - shard.request_bytes
    children = [
        shard.model_copy(update={
            "index": -1, "state": ShardState.STAGED, "origin": ShardOrigin.SPLIT, "parent": shard.index,
            "records_uri": paths.split_records(shard.index, n), "request_count": t.rows,
            "request_bytes": t.request_bytes, "record_bytes": t.record_bytes, "estimated_tokens": t.tokens,
            "file_bytes": t.request_bytes + result_bytes * t.rows // max(shard.request_count, 1),
            "fair_key": shard.fair_key + (first.tokens if n else 0), "reservation": None, "batch_name": None,
            "input_ref": None, "create_started_at": None, "next_poll_at": None, "lease_owner": None,
            "lease_until": None, "created_at": now, "updated_at": now, "provider_error": None,
        })
        for n, t in enumerate((first, second)) if t.rows
    ]

    def move(job: Job, stored: Shard) -> bool:
        if stored.state != ShardState.STAGED:
            return False
        stored.move_to(ShardState.SPLIT, now)
        return True

    stored, _ = close_shard(ctx, shard.job_id, shard.index, move, added=children)
    log.warning("split a shard over the provider's capacity", shard=shard.index, tokens=shard.estimated_tokens,
                halves=[first.tokens, second.tokens])
    return stored is not None and stored.state == ShardState.SPLIT
