"""Complete: write one finished shard's results, or finish a job whose shards are all final.

Triggered by messages on the complete topic (at-least-once): one per shard whose batch succeeded (from the
poller, a webhook, or a retry), and one per job to finish. Shards are written in parallel by separate
invocations. Guarantees:
- idempotent: a shard's output files have fixed names; it becomes WRITTEN, with its counts added to the
  job's, in one transaction, once its files are durable; a rerun of a written shard does nothing;
- items whose own request failed go on as a follow-up shard, created in that same transaction (so no
  item can be counted neither failed nor carried on), while `max_item_attempts` allows and the job is
  neither cancelled nor past its deadline; the follow-up waits for capacity like any other shard;
- the transaction that closes the job's last open shard moves the job to COMPLETING and tells this
  invocation, which finishes the job (`shared.services.finish`): `errors.jsonl`, then the manifest, then
  one event. A crash after that transaction leaves the job COMPLETING, which the redelivered message (or the
  poller, when it is stale) finishes;
- memory is bounded by one shard's ids, titles and metadata (cut by `max_shard_record_bytes`) plus one
  block of vectors (`shared.services.output`);
- work is bounded whatever the batch's size: one invocation parses and writes at most the shard's
  `write_rows` items (`complete_max_rows` when it was made; the results before them are read, unparsed);
  past them the shard is WRITTEN with what it wrote, in the transaction that creates its continuation: a
  SUCCEEDED shard of the same batch that skips the results read so far and the keys written so far (listed
  in a file written first), so no item is written twice or lost. Where a shard stops depends on its
  results and `write_rows` alone (not on time, nor on a worker's settings): every worker of it writes the
  same bytes, its keys file included. The continuation gets its own message (and is due, so the poller
  hands it over again if that message is lost); the batch's results are dropped, and its capacity
  released, once the last shard of the chain is written.
"""

from __future__ import annotations

from datetime import timedelta

from shared.domain.jobs import ErrorInfo, Job, JobState, Shard, ShardOrigin, ShardState
from shared.errors import PermanentError
from shared.logging import get_logger
from shared.services import messages
from shared.services.admission import admit
from shared.services.batches import abandon_shard, close_shard, drop_results
from shared.services.context import Context
from shared.services.finish import finish_job, paths_of
from shared.services.leasing import LeaseLost, leased_shard
from shared.services.output import Written, write_shard_output
from shared.services.records import iter_records, write_subset, written_keys

__all__ = ["complete_message", "write_shard"]

log = get_logger(__name__)


def complete_message(ctx: Context, job_id: str, shard: int | None) -> str:
    """Handle one message of the complete topic."""
    if shard is None:
        return finish_job(ctx, job_id)
    return write_shard(ctx, job_id, shard)


def write_shard(ctx: Context, job_id: str, index: int) -> str:
    """Write one SUCCEEDED shard's results; returns what was done. Raises `LeaseHeld` when another worker
    writes it now."""
    with leased_shard(ctx, job_id, index) as shard:
        if shard.final:
            return _finish_if_completing(ctx, job_id, "already_written")
        if shard.state != ShardState.SUCCEEDED:
            return "not_ready"
        job = ctx.jobs.get(job_id)
        if job is None:
            return "no_job"
        if job.terminal or job.stopping:
            return "job_ended"  # the stop abandons its shards
        paths = paths_of(ctx, job)
        try:
            skip = written_keys(ctx, shard)
            written = write_shard_output(ctx, paths, shard, job.options.output_dimensionality, reuse=job.options.reuse,
                                         skip=skip, max_rows=shard.write_rows or ctx.settings.complete_max_rows)
        except PermanentError as exc:
            log.error(f"results of shard {index} are unreadable: {exc.message}", shard=index, code=exc.code)
            last = abandon_shard(ctx, shard, ErrorInfo(code=exc.code, message=f"results unreadable: {exc.message}"),
                                 owner=ctx.owner, states=[ShardState.SUCCEEDED])
            return _finish(ctx, job_id, last, "abandoned")
        output = written.output
        follow_up = _follow_up(ctx, job, shard, output.failed, output.failed_items_uri)
        continuation = _continuation(ctx, paths.written_keys(index), shard, skip, written)
        now = ctx.clock()

        def move(stored_job: Job, stored: Shard) -> bool:
            if stored.lease_owner != ctx.owner or stored.state != ShardState.SUCCEEDED:
                raise LeaseLost(f"shard {job_id}/{index} was taken over while its results were written")
            moved.append(index)
            stored.move_to(ShardState.WRITTEN, now)
            stored.output = output
            stored.succeeded, stored.failed = output.succeeded, output.failed
            stored.reported_tokens = output.reported_tokens
            stored.cache_writes = output.cache_writes
            stored.reused = output.succeeded if stored.origin == ShardOrigin.CACHE else 0
            stored.followed_up = follow_up is not None
            stored.lease_owner = stored.lease_until = None
            return True

        moved: list[int] = []
        try:
            _, last = close_shard(ctx, job_id, index, move, carried=output.failed if follow_up else 0,
                                  added=[s for s in (follow_up, continuation) if s is not None])
        finally:
            if not moved:
                _discard_late_writes(ctx, job_id, index)
        if not moved:
            return "already_written"
    log.info("shard written", shard=index, succeeded=output.succeeded, failed=output.failed,
             follow_up=follow_up is not None, continuation=continuation.index if continuation else None)
    if continuation is not None:
        messages.write_shard(ctx, job_id, continuation.index)
    else:
        drop_results(ctx, shard)
    if follow_up is not None and not last:
        admit(ctx, shard.ledger, inline=True)
    return _finish(ctx, job_id, last, "written")


def _discard_late_writes(ctx: Context, job_id: str, index: int) -> None:
    """This worker's lease lapsed while it wrote the shard. If another wrote it, the output files are the
    same bytes under the same names; if it was abandoned meanwhile, its output files must not exist (its
    items count as failed). The staging files this one wrote may have landed after the job ended and
    dropped its staging: then they are this worker's to delete."""
    job = ctx.jobs.get(job_id)
    stored = ctx.jobs.get_shard(job_id, index)
    if job is None:
        return
    paths = paths_of(ctx, job)
    if stored is not None and stored.state == ShardState.ABANDONED:
        for uri in (paths.embeddings(index), paths.parquet(index)):
            ctx.blobs.delete(uri)
    if job.terminal:  # else: the same files the shard's writer made, in use; the job drops them at its end
        for uri in (paths.failed_items(index), paths.index_part(index), paths.follow_up_records(index),
                    paths.written_keys(index)):
            ctx.blobs.delete(uri)


def _follow_up(ctx: Context, job: Job, shard: Shard, failed: int, failed_uri: str | None) -> Shard | None:
    """A STAGED shard of the shard's failed items, when they may be tried again (its records file written
    first, under a name fixed by its parent, so a rerun writes the same file)."""
    if not failed or failed_uri is None or shard.item_attempt >= ctx.settings.max_item_attempts:
        return None
    if job.past_deadline(ctx.clock()):
        return None
    keys = {row["key"] for _, row in iter_records(ctx, failed_uri)}
    uri = paths_of(ctx, job).follow_up_records(shard.index)
    totals = write_subset(ctx, shard.records_uri, uri, lambda row: row["key"] in keys)
    now = ctx.clock()
    result_bytes = shard.file_bytes - shard.request_bytes
    return Shard(
        job_id=job.job_id, index=-1, origin=ShardOrigin.FOLLOW_UP, parent=shard.index,
        item_attempt=shard.item_attempt + 1, records_uri=uri, request_count=totals.rows,
        request_bytes=totals.request_bytes, record_bytes=totals.record_bytes, estimated_tokens=totals.tokens,
        file_bytes=totals.request_bytes + result_bytes * totals.rows // max(shard.request_count, 1),
        provider=shard.provider, ledger=shard.ledger or job.ledger, priority=shard.priority, fair_key=shard.fair_key,
        write_rows=shard.write_rows, created_at=now, updated_at=now,
    )


def _continuation(ctx: Context, uri: str, shard: Shard, skip: frozenset[str], written: Written) -> Shard | None:
    """When the shard's `write_rows` were written: the SUCCEEDED shard that writes the rest of its results,
    with the keys written so far in `uri` (written first, under a name fixed by the shard, so a rerun writes
    the same file)."""
    if written.keys is None:
        return None
    keys = skip | written.keys
    ctx.blobs.write_bytes(uri, "\n".join(sorted(keys, key=int)).encode(), "text/plain")
    now = ctx.clock()
    rest = shard.request_count - len(written.keys)
    share = rest / max(shard.request_count, 1)  # of the shard's estimates, for capacity and follow-ups
    return Shard(
        job_id=shard.job_id, index=-1, state=ShardState.SUCCEEDED, origin=shard.origin, parent=shard.parent,
        item_attempt=shard.item_attempt, records_uri=shard.records_uri, request_count=rest,
        request_bytes=int(shard.request_bytes * share), file_bytes=int(shard.file_bytes * share),
        record_bytes=shard.record_bytes, estimated_tokens=int(shard.estimated_tokens * share),
        write_rows=shard.write_rows, provider=shard.provider, ledger=shard.ledger,
        priority=shard.priority, fair_key=shard.fair_key, batch_name=shard.batch_name,
        continues=shard.index if shard.continues is None else shard.continues,
        results_from=shard.results_from + written.consumed, written_keys_uri=uri,
        succeeded=rest, created_at=now, updated_at=now,
        next_poll_at=now + timedelta(minutes=ctx.settings.complete_stale_minutes),
    )


def _finish(ctx: Context, job_id: str, last: bool, step: str) -> str:
    if last:
        finish_job(ctx.for_invocation(), job_id)
        return f"{step}_and_finished"
    return step


def _finish_if_completing(ctx: Context, job_id: str, step: str) -> str:
    """A repeated message for a written shard: finish the job if that was left undone."""
    job = ctx.jobs.get(job_id)
    if job is not None and (job.state == JobState.COMPLETING or (job.terminal and job.event_published_at is None)):
        finish_job(ctx.for_invocation(), job_id)
        return f"{step}_and_finished"
    return step
