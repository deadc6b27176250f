"""Reconciliation: what no event will ever fix, found and fixed by the poller's tick, at a bounded cost.

- Capacity held by nobody (`reconcile_ledger`): a worker that died between reserving capacity and moving
  its shard, or between moving a shard and releasing, leaves a hold no one will release. Holds older than a
  lease are checked against their shard's state (a few per tick): what the shard no longer needs is freed.
  Each verdict names the reservation it judged, so a hold re-admitted meanwhile is never freed. Bytes of
  files the provider keeps are freed when those files expire; a written shard's continuation still reading
  its batch's results keeps them held (its chain's last link drops them).
- Uploads without a job (`reconcile_inputs`): a finalize event can be lost to a burst (retries used up,
  dead-lettered). Each tick lists one page of the input prefix, resuming after the last name seen (the
  listing wraps around the bucket over many ticks), and submits every object uploaded between
  `reconcile_horizon_hours` and `reconcile_grace_minutes` ago that has no job: job ids are computed from the
  objects, and one batched read tells which exist. Cost per tick: one listing page and one read per recent
  object on it; nothing for older objects.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.domain.jobs import (
    SHARD_HOLDS_TOKENS,
    SHARD_PROVIDER_ENDED,
    Shard,
    ShardState,
    SourceObject,
    job_id_for,
)
from shared.domain.ledger import Hold, Ledger
from shared.logging import get_logger
from shared.services import messages
from shared.services.batches import RESULTS_KEPT
from shared.services.context import Context

__all__ = ["reconcile_inputs", "reconcile_ledger"]

log = get_logger(__name__)

#: Holds checked per ledger per tick at most (each costs one shard read).
_CHECKS_PER_TICK = 20
_MARKER = "reconcile_inputs"


def reconcile_ledger(ctx: Context, key: str) -> int:
    """Free capacity that no shard needs any more; returns how many holds were freed or shortened."""
    ledger = ctx.ledgers.get(key)
    if ledger is None:
        return 0
    now = ctx.clock()
    stale = now - timedelta(seconds=ctx.settings.lease_seconds)
    suspects = [h for h in ledger.holds.values() if h.since <= stale][:_CHECKS_PER_TICK]
    # The tick holds no provider credential: a written shard's results are counted until they expire.
    verdicts = [(h, _verdict(ctx, h, ctx.jobs.get_shard(h.job_id, h.shard))) for h in suspects]
    expiring = any(datetime.fromisoformat(hour) <= now for hour in ledger.kept_files)
    if not expiring and not any(v != "keep" for _, v in verdicts):
        return 0

    def fix(stored: Ledger) -> int:
        # Each verdict names the reservation it judged: a hold re-admitted since is left alone.
        fixed = stored.expire(now)
        for hold, verdict in verdicts:
            if verdict == "release":
                stored.release(hold.job_id, hold.shard, hold.reservation, now)
            elif verdict == "batch_ended":
                stored.batch_ended(hold.job_id, hold.shard, hold.reservation, now)
            elif verdict == "files_expire":
                stored.files_kept_until(hold.job_id, hold.shard, hold.reservation, now + RESULTS_KEPT, now)
            fixed += verdict != "keep"
        return fixed

    _, fixed = ctx.ledgers.update(key, fix)
    if fixed:
        log.warning("reclaimed capacity held by nobody", ledger=key, holds=fixed)
    return fixed


def _verdict(ctx: Context, hold: Hold, shard: Shard | None) -> str:
    if shard is None or shard.reservation != hold.reservation or shard.state in (ShardState.STAGED, ShardState.ABANDONED,
                                                              ShardState.SPLIT) or shard.state in SHARD_PROVIDER_ENDED:
        return "release"
    if shard.state in SHARD_HOLDS_TOKENS:
        return "keep"
    if shard.state == ShardState.SUCCEEDED:
        return "batch_ended" if hold.tokens or hold.batch else "keep"
    if _continued(ctx, shard):
        return "keep"  # a continuation still reads the batch's results; the chain's last link drops them
    return "files_expire"  # WRITTEN: the provider may keep its results until they expire


def _continued(ctx: Context, shard: Shard) -> bool:
    """Whether a continuation of this WRITTEN shard is still to be written (one query of the job's ready
    shards, only for a written shard's hold older than a lease)."""
    return any(s.continues == shard.index for s in ctx.jobs.shards(shard.job_id, states=[ShardState.SUCCEEDED.value]))


def reconcile_inputs(ctx: Context) -> int:
    """Submit recent uploads that have no job (see the module docstring); returns how many."""
    settings = ctx.settings
    now = ctx.clock()
    marker = ctx.jobs.marker(_MARKER)
    prefix = f"gs://{settings.input_bucket}/{settings.input_prefix}"
    page = list(ctx.blobs.list(prefix, start_after=marker.get("after"), limit=settings.reconcile_max_objects))
    newest = now - timedelta(minutes=settings.reconcile_grace_minutes)
    oldest = now - timedelta(hours=settings.reconcile_horizon_hours)
    candidates = {}
    for blob in page:
        name = blob.uri[len(f"gs://{settings.input_bucket}/"):]
        if blob.updated is None or not oldest <= blob.updated <= newest or name.endswith("/") or blob.generation is None:
            continue
        candidates[job_id_for(settings.input_bucket, name, blob.generation)] = (name, blob)
    missing = set(candidates) - ctx.jobs.exist(list(candidates)) if candidates else set()
    for job_id in sorted(missing):
        name, blob = candidates[job_id]
        log.warning("an upload has no job: submitting it", source=blob.uri, generation=blob.generation)
        messages.stage_object(ctx, SourceObject(
            bucket=settings.input_bucket, name=name, generation=blob.generation, size=blob.size,
            content_type=blob.content_type, content_encoding=blob.content_encoding, metadata=blob.metadata,
        ))
    full = len(page) >= settings.reconcile_max_objects
    after = page[-1].uri[len(f"gs://{settings.input_bucket}/"):] if full and page else None
    if after != marker.get("after"):
        ctx.jobs.set_marker(_MARKER, {"after": after})
    return len(missing)
