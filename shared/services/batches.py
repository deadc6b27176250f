"""A shard's batch: created exactly once although the provider's create is not idempotent, followed to its
end, and every batch the provider holds either adopted by its shard or cancelled.

Creating (the shard is CREATING: capacity reserved, under the shard's own lease):
- the create's intent is saved first (`create_started_at`, and the tag that ends the batch's display
  name); a worker that learns nothing of a create it may have made (crash, timeout, a 5xx after the create
  reached the provider) leaves the shard CREATING, due when its lease lapses; the next worker lists the
  provider's batches carrying the tag, adopts one and cancels the others, or creates again when none does;
- a create starts only while the lease has room for the whole call (one request, no retry);
- a worker that finds, after creating, that it lost the shard (its lease lapsed and another took over, or
  the job ended meanwhile) cancels what it created, unless the stored shard adopted that very batch;
- a create refused for capacity (429) made nothing: the shard waits again, the ledger learns, and the job's
  retry budget is not spent on it. Refused with nothing else in flight, the shard is split.
Ending: a batch that ends releases the shard's capacity (tokens first; the files' bytes once they are
deleted), and the shard's final move and the job's counters change in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from shared.domain.jobs import (
    ErrorInfo,
    Job,
    Shard,
    ShardState,
)
from shared.domain.ledger import Ledger
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.logging import get_logger
from shared.ports import BatchProvider, JobTx, ProviderBatch, ProviderState
from shared.services import messages
from shared.services.context import Context
from shared.services.leasing import LeaseLost, ShardMoved, lease_left, leased_shard, save_shard
from shared.services.records import staged_items

__all__ = [
    "adopt",
    "batch_display_name",
    "cancel_strays",
    "close_shard",
    "create_batch_for",
    "drop_results",
    "provider_of",
    "release_capacity",
    "resolve_by_tag",
    "stop_batch",
]

log = get_logger(__name__)

#: How far before the CREATING mark a recovered batch may have been created (clock skew).
RECOVERY_MARGIN = timedelta(minutes=10)
#: The Files API keeps a file 48 hours: a results file it will not delete frees its storage then.
RESULTS_KEPT = timedelta(hours=48)
#: Time a create call needs beyond its HTTP timeout (connection set-up, our own saves around it).
CREATE_SLACK_SECONDS = 30.0
#: Seconds the ledger asks nothing after an upload refused for storage (results files fill it for 48 h).
UPLOAD_HOLD_OFF = 300.0
_DISPLAY_BASE_MAX = 80
_PREFERENCE = {ProviderState.SUCCEEDED: 0, ProviderState.RUNNING: 1, ProviderState.PENDING: 2}


def provider_of(ctx: Context, shard: Shard) -> BatchProvider:
    return ctx.provider_for(shard.provider or shard.ledger.split("~", 1)[0])


def batch_display_name(job: Job, shard: Shard) -> str:
    """The user's display name (or the source's name), then the shard's recovery tag."""
    base = (job.options.display_name if job.options and job.options.display_name else job.source.name).strip()
    if len(base) > _DISPLAY_BASE_MAX:
        base = "…" + base[-(_DISPLAY_BASE_MAX - 1):]
    return f"{base} {shard.tag()}"


def adopt(shard: Shard, batch: ProviderBatch, now: datetime) -> None:
    """Take the provider's view of the shard's batch: name, state, counts, error."""
    shard.batch_name = batch.name
    shard.move_to(ShardState(batch.state.value), now)
    shard.succeeded, shard.failed, shard.pending = batch.succeeded, batch.failed, batch.pending
    if batch.error is not None:
        shard.provider_error = ErrorInfo(code=batch.error.code, message=batch.error.message)


def stop_batch(ctx: Context, provider: BatchProvider, name: str) -> None:
    """Cancel a batch. A failure propagates (`TransientError`): the caller has not forgotten the batch yet,
    and its next attempt cancels it again (a finished or missing batch is no failure)."""
    provider.cancel_batch(name)


def resolve_by_tag(ctx: Context, provider: BatchProvider, shard: Shard, *, keep: bool) -> ProviderBatch | None:
    """Find every batch carrying the shard's current tag. With `keep`, the best one (furthest along, then
    oldest) is returned for adoption and the others are cancelled; without, all of them are cancelled."""
    since = (shard.create_started_at or shard.created_at) - RECOVERY_MARGIN
    found = provider.find_batches(shard.tag(), created_after=since)
    found.sort(key=lambda b: (_PREFERENCE.get(b.state, 3), b.create_time or since, b.name))
    kept = found[0] if keep and found else None
    for batch in found:
        if batch is not kept and not batch.terminal:
            log.warning("cancelling a second batch of one shard attempt", shard=shard.index, batch=batch.name)
            stop_batch(ctx, provider, batch.name)
    return kept


def release_capacity(ctx: Context, shard: Shard, *, batch_only: bool = False) -> None:
    """Give back what the shard holds in its ledger: its batch and tokens, and unless `batch_only` its
    files' bytes too. Idempotent; called after the shard's own move is stored (so a crash in between leaks
    capacity, which reconciliation reclaims, and never over-commits it)."""
    if not shard.ledger or shard.reservation is None:
        return  # it holds nothing (a held shard, or one never admitted)
    now = ctx.clock()

    def free(ledger: Ledger) -> None:
        if batch_only:
            ledger.batch_ended(shard.job_id, shard.index, shard.reservation, now)
        else:
            ledger.release(shard.job_id, shard.index, shard.reservation, now)

    ctx.ledgers.update(shard.ledger, free)


def close_shard(ctx: Context, job_id: str, index: int, move: Callable[[Job, Shard], bool | None], *,
                carried: int = 0, added: list[Shard] | None = None, owner: str | None = None,
                states: Iterable[ShardState] | None = None) -> tuple[Shard | None, bool]:
    """In one transaction: apply `move` (which makes the shard final, or returns False to leave it) and count
    it on the job. Returns the stored shard and whether this left the job with nothing open (COMPLETING):
    the caller then finishes the job. `added` shards (a follow-up, split halves) are created with it.

    Fenced: with `owner`, the stored shard must still be under that worker's lease (else `LeaseLost`); with
    `states`, it must still be in one of them (else nothing happens): a worker acting on a stale view of a
    shard never moves it."""
    now = ctx.clock()
    allowed = frozenset(states) if states is not None else None

    def change(tx: JobTx) -> bool:
        shard = tx.shards[index]
        if shard is None or shard.final or (allowed is not None and shard.state not in allowed):
            return False
        if owner is not None and shard.lease_owner != owner:
            raise LeaseLost(f"shard {job_id}/{index} was taken over by another worker")
        if move(tx.job, shard) is False:
            return False
        for child in added or ():
            child.index = tx.job.allocate_shard()
            tx.added.append(child)
        return tx.job.close_shard(shard, now, carried=carried)

    tx, last = ctx.jobs.update(job_id, change, shards=[index])
    return tx.shards[index], last


def abandon_shard(ctx: Context, shard: Shard, error: ErrorInfo, *, owner: str | None = None,
                  states: Iterable[ShardState] | None = None, batch: str | None = None) -> bool:
    """Abandon a shard with its counters (fenced as `close_shard`), then free what it holds. True when the
    job is left with nothing open. `batch`: the batch found for it, recorded on it (adopted, not read)."""
    now = ctx.clock()

    def move(job: Job, stored: Shard) -> None:
        stored.abandon(error, now)
        if batch is not None:
            stored.batch_name = batch

    stored, last = close_shard(ctx, shard.job_id, shard.index, move, owner=owner, states=states)
    if stored is None or stored.state != ShardState.ABANDONED:
        return False
    if shard.input_ref:
        _delete_input(ctx, shard)
    if shard.state == ShardState.SUCCEEDED:  # its results exist at the provider: they go, or stay counted
        drop_results(ctx, shard)
    else:
        release_capacity(ctx, shard)
    return last


def drop_results(ctx: Context, shard: Shard) -> None:
    """Delete the batch's results at the provider; its files' capacity is free once they are gone, or when
    they expire if the provider keeps them (Gemini refuses to delete results files: 48 h). A continuation's
    batch, and the capacity it holds, are those of the shard it continues."""
    if shard.continues is not None:
        shard = ctx.jobs.get_shard(shard.job_id, shard.continues) or shard
    if not shard.batch_name:
        release_capacity(ctx, shard)
        return
    try:
        deleted = provider_of(ctx, shard).delete_results(shard.batch_name)
    except Exception:  # noqa: BLE001 - they expire on their own
        log.warning("could not delete batch results", shard=shard.index, batch=shard.batch_name, exc_info=True)
        deleted = False
    if deleted or not shard.ledger or shard.reservation is None:
        release_capacity(ctx, shard)
        return
    now = ctx.clock()
    ctx.ledgers.update(shard.ledger, lambda ledger: ledger.files_kept_until(
        shard.job_id, shard.index, shard.reservation, now + RESULTS_KEPT, now))


def _delete_input(ctx: Context, shard: Shard) -> None:
    try:
        provider_of(ctx, shard).delete_input(shard.input_ref)
    except Exception:  # noqa: BLE001 - the provider expires inputs on its own (48 h)
        log.warning("could not delete a batch input", shard=shard.index, input=shard.input_ref, exc_info=True)


# -- creating ---------------------------------------------------------------------------------------------


def create_batch_for(ctx: Context, job_id: str, index: int) -> str:
    """Give one CREATING shard its batch, exactly once. Returns what happened. Raises `LeaseHeld` when another
    worker holds the shard, `TransientError` when the create's outcome is unknown (the shard stays CREATING
    and recovers by its tag)."""
    with leased_shard(ctx, job_id, index) as shard:
        if shard.state != ShardState.CREATING:
            return "not_creating"
        job = ctx.jobs.get(job_id)
        if job is None or job.terminal or job.stopping or job.past_deadline(ctx.clock()):
            return _stand_down(ctx, shard, job)
        provider = provider_of(ctx, shard)
        if shard.create_started_at is not None:  # a create may have been made for this attempt
            found = resolve_by_tag(ctx, provider, shard, keep=True)
            if found is not None:
                return _record(ctx, provider, job, shard, found, "recovered")
        if shard.input_ref is None:
            try:
                shard.input_ref, _ = provider.prepare_input(staged_items(ctx, shard.records_uri), job.options,
                                                            batch_display_name(job, shard))
            except CapacityExhausted as exc:  # file storage full: nothing was made, the token cap is not news
                return _refused(ctx, shard, CapacityExhausted(exc.message, retry_after=exc.retry_after or UPLOAD_HOLD_OFF))
        shard.create_started_at = ctx.clock()
        save_shard(ctx, shard)  # the intent, and a renewed lease
        needed = ctx.settings.gemini_timeout_seconds + CREATE_SLACK_SECONDS
        if lease_left(shard, ctx) < needed:
            raise LeaseLost(f"shard {job_id}/{index}: the lease has {lease_left(shard, ctx):.0f} s left, "
                            f"a create needs {needed:.0f} s")
        try:
            batch = provider.create_batch(options=job.options, input_ref=shard.input_ref,
                                          display_name=batch_display_name(job, shard), tag=shard.tag())
        except CapacityExhausted as exc:
            return _refused(ctx, shard, exc)
        except TransientError:  # made or not: the next worker recovers it by its tag
            shard.uncertain_create = True
            _note_uncertain(ctx, shard)
            raise
        except PermanentError as exc:
            last = abandon_shard(ctx, shard, ErrorInfo(code=exc.code, message=f"the provider refused the batch: {exc.message}"),
                                 owner=ctx.owner, states=[ShardState.CREATING])
            if last:
                messages.finish_job(ctx, job_id)
            return "refused_permanently"
        return _record(ctx, provider, job, shard, batch, "created")


def _note_uncertain(ctx: Context, shard: Shard) -> None:
    """A create may have made a batch. Under the lease that is saved with the shard (the next worker
    recovers by the tag). A worker that lost the shard names the tag as stray instead, unfenced, and makes
    the shard due (its next poll cancels any batch of the tag the shard did not adopt); unless the shard is
    being created by another worker, it cancels them at once itself."""
    try:
        save_shard(ctx, shard)
    except (LeaseLost, ShardMoved):
        now, tag = ctx.clock(), shard.tag()
        stored, _ = ctx.jobs.update_shard(shard.job_id, shard.index, lambda s: _note_stray_tag(s, tag, now))
        if stored.state != ShardState.CREATING:
            cancel_strays(ctx, stored)
    except TransientError:
        log.warning("could not note an uncertain create", shard=shard.index, exc_info=True)


def _note_stray_tag(shard: Shard, tag: str, now: datetime) -> None:
    if tag not in shard.stray_tags:
        shard.stray_tags.append(tag)
    shard.next_poll_at = min(shard.next_poll_at or now, now)


def _record(ctx: Context, provider: BatchProvider, job: Job, shard: Shard, batch: ProviderBatch, what: str) -> str:
    """Adopt the batch on the shard, fenced by the lease; a worker that lost the shard cancels the batch."""
    now = ctx.clock()
    try:
        adopt(shard, batch, now)
        shard.next_poll_at = ctx.next_poll_at(now, size=shard.request_count, age_seconds=0)
        save_shard(ctx, shard, last=True)
    except LeaseLost:
        stored = ctx.jobs.get_shard(shard.job_id, shard.index)
        if stored is None or stored.batch_name != batch.name:
            log.warning("lost the shard after creating its batch: cancelling the batch", shard=shard.index,
                        batch=batch.name)
            try:
                stop_batch(ctx, provider, batch.name)
            except TransientError:  # named on the shard, due now: its next poll (or the stop) cancels it
                ctx.jobs.update_shard(shard.job_id, shard.index, lambda s: _note_stray(s, batch.name, now))
                raise
        raise
    ctx.ledgers.update(shard.ledger, lambda ledger: ledger.created(shard.job_id, shard.index, shard.reservation, now))
    if job.first_admitted_at is None:
        _note_admitted(ctx, job.job_id, now)
    log.info(f"batch {what}", job_id=job.job_id, shard=shard.index, batch=batch.name, requests=shard.request_count,
             tokens=shard.estimated_tokens)
    if batch.terminal:  # recovered after it ended: it ends now, as a poll would have seen it
        from shared.services.poll import batch_ended  # the end of a batch lives with polling
        stored = ctx.jobs.get_shard(shard.job_id, shard.index)
        if stored is not None and stored.batch_name == batch.name and stored.state == shard.state:
            batch_ended(ctx, stored)
    return what


def _note_stray(shard: Shard, name: str, now: datetime) -> None:
    if name not in shard.strays:
        shard.strays.append(name)
    shard.next_poll_at = min(shard.next_poll_at or now, now)


def cancel_strays(ctx: Context, shard: Shard, *, stopping: bool = False) -> None:
    """Cancel the batches named stray on the shard, and those of its stray tags it did not adopt, then
    forget them (a failed cancel raises: they stay). A CREATING shard's tags wait (its creator may be about
    to adopt a batch of one) unless the shard is `stopping`."""
    provider = provider_of(ctx, shard)
    names = list(shard.strays)
    tags = list(shard.stray_tags) if stopping or shard.state != ShardState.CREATING else []
    since = shard.created_at - RECOVERY_MARGIN
    for tag in tags:
        names += [b.name for b in provider.find_batches(tag, created_after=since)
                  if b.name != shard.batch_name and not b.terminal]
    for name in names:
        log.warning("cancelling a batch its creator could not", shard=shard.index, batch=name)
        stop_batch(ctx, provider, name)

    def forget(stored: Shard) -> None:
        stored.strays = [n for n in stored.strays if n not in shard.strays]
        stored.stray_tags = [t for t in stored.stray_tags if t not in tags]

    ctx.jobs.update_shard(shard.job_id, shard.index, forget)


def _note_admitted(ctx: Context, job_id: str, now: datetime) -> None:
    def note(tx: JobTx) -> None:
        if tx.job.first_admitted_at is None:
            tx.job.first_admitted_at = now

    ctx.jobs.update(job_id, note)


def _refused(ctx: Context, shard: Shard, exc: CapacityExhausted) -> str:
    """No capacity after all: nothing was made. The shard waits again (or is split), the ledger learns."""
    now = ctx.clock()
    reservation, input_ref = shard.reservation, shard.input_ref
    shard.input_ref = None
    shard.create_started_at = None
    shard.reservation = None
    shard.move_to(ShardState.STAGED, now)
    shard.next_poll_at = None
    save_shard(ctx, shard, last=True)  # fenced: a worker that lost the shard touches nothing of its batch
    if input_ref:  # the ledger frees its bytes with the hold: do not keep it at the provider
        _delete_input(ctx, shard.model_copy(update={"input_ref": input_ref}))
    if exc.retry_after is not None:  # a rate limit says when: wait that long, learn nothing about the cap
        ctx.ledgers.update(shard.ledger, lambda ledger: ledger.rate_limited(
            shard.job_id, shard.index, reservation, now, exc.retry_after))
        log.warning("create rate-limited: the shard waits", shard=shard.index, retry_after=exc.retry_after)
        return "rate_limited"
    _, alone = ctx.ledgers.update(shard.ledger, lambda ledger: ledger.refused(
        shard.job_id, shard.index, reservation, shard.estimated_tokens, now))
    log.warning("create refused for capacity: the shard waits", shard=shard.index, tokens=shard.estimated_tokens,
                alone=alone, error=exc.message)
    if alone:
        from shared.services.admission import split_shard  # split lives with admission
        split_shard(ctx, shard)
        return "split"
    return "refused"


def _stand_down(ctx: Context, shard: Shard, job: Job | None) -> str:
    """The job ended, is cancelled or past its deadline: make sure no batch of this shard runs, then
    abandon it (naming the batch a lost answer made, if any)."""
    provider = provider_of(ctx, shard)
    batch = None
    if shard.create_started_at is not None:
        found = resolve_by_tag(ctx, provider, shard, keep=True)
        if found is not None:
            batch = found.name
            if not found.terminal:
                stop_batch(ctx, provider, found.name)
    if job is not None and job.failing is not None:
        error = job.failing
    elif job is not None and job.cancel_requested:
        error = ErrorInfo(code="CANCELLED", message="the job was cancelled")
    else:
        error = ErrorInfo(code="DEADLINE_EXCEEDED", message="the job ended or passed its deadline")
    if abandon_shard(ctx, shard, error, owner=ctx.owner, states=[ShardState.CREATING], batch=batch):
        messages.finish_job(ctx, shard.job_id)
    return "stood_down"


def get_batch(ctx: Context, shard: Shard) -> ProviderBatch:
    try:
        return provider_of(ctx, shard).get_batch(shard.batch_name)
    except NotFound as exc:
        return ProviderBatch(name=shard.batch_name, state=ProviderState.FAILED,
                             error=ErrorInfo(code="BATCH_NOT_FOUND", message=exc.message))
