"""Creating a shard's provider batch exactly once, although the provider's create is not idempotent.

Before calling create, the shard is saved as CREATING with a tag that ends the batch's display name
(`[job/sNaM]`). A worker that dies between create and saving the batch's name leaves the shard CREATING;
the next worker finds the batch by its tag and adopts it instead of creating a second one. A create that
failed leaves nothing to find, and is made again with the same tag.
"""

from __future__ import annotations

from datetime import timedelta

import orjson

from shared.domain.jobs import ErrorInfo, Job, Shard, ShardMode, ShardState
from shared.logging import get_logger
from shared.ports import ProviderBatch
from shared.services.context import Context
from shared.services.leasing import save

__all__ = ["adopt", "batch_display_name", "ensure_batch", "stop_batch", "UPLOAD_CHUNK"]

log = get_logger(__name__)

UPLOAD_CHUNK = 8 * 1024 * 1024
#: How far before the CREATING mark a recovered batch may have been created (clock skew).
_RECOVERY_MARGIN = timedelta(minutes=10)
_DISPLAY_BASE_MAX = 80


def batch_display_name(job: Job, shard: Shard) -> str:
    """The user's display name (or the source's name), then the shard's recovery tag."""
    base = (job.options.display_name if job.options and job.options.display_name else job.source.name).strip()
    if len(base) > _DISPLAY_BASE_MAX:
        base = "…" + base[-(_DISPLAY_BASE_MAX - 1):]
    return f"{base} {shard.tag(job.job_id)}"


def adopt(shard: Shard, batch: ProviderBatch) -> None:
    """Take the provider's view of the shard's batch: name, state, counts, error."""
    shard.batch_name = batch.name
    shard.state = ShardState(batch.state.value)
    shard.succeeded = batch.succeeded
    shard.failed = batch.failed
    shard.pending = batch.pending
    if batch.error is not None:
        shard.provider_error = ErrorInfo(code=batch.error.code, message=batch.error.message)


def stop_batch(ctx: Context, name: str) -> None:
    """Cancel a batch, best effort: a failure is logged, and the caller ends its shard or job either way."""
    try:
        ctx.provider.cancel_batch(name)
    except Exception:  # noqa: BLE001 - best effort
        log.warning("could not cancel batch", batch=name, exc_info=True)


def ensure_batch(ctx: Context, job: Job, shard: Shard) -> None:
    """Give a STAGED or CREATING shard its batch, once. Saves progress after each step.

    Raises the provider's TransientError (retry later: the shard stays recoverable) or PermanentError.
    """
    if shard.state not in (ShardState.STAGED, ShardState.CREATING):
        return
    if shard.state == ShardState.CREATING:
        since = (shard.create_started_at or job.created_at) - _RECOVERY_MARGIN
        found = ctx.provider.find_batch(shard.tag(job.job_id), created_after=since)
        if found is not None:
            adopt(shard, found)
            save(ctx, job)
            log.info("recovered batch created before a crash", job_id=job.job_id, shard=shard.index, batch=found.name)
            return
    else:
        shard.batch_attempts += 1
    display_name = batch_display_name(job, shard)
    if shard.mode == ShardMode.FILE and shard.input_file is None:
        shard.input_file = _upload(ctx, shard, display_name)
    shard.state = ShardState.CREATING
    shard.create_started_at = ctx.clock()
    save(ctx, job)
    batch = ctx.provider.create_batch(
        model=job.options.model,
        display_name=display_name,
        priority=job.options.priority,
        requests=_inline_requests(ctx, shard) if shard.mode == ShardMode.INLINE else None,
        file_name=shard.input_file if shard.mode == ShardMode.FILE else None,
    )
    adopt(shard, batch)
    save(ctx, job)
    log.info("batch created", job_id=job.job_id, shard=shard.index, batch=batch.name, requests=shard.request_count)


def _upload(ctx: Context, shard: Shard, display_name: str) -> str:
    info = ctx.blobs.stat(shard.requests_uri)
    if info is None:
        raise FileNotFoundError(f"staged requests {shard.requests_uri} are missing")
    with ctx.blobs.open_read(shard.requests_uri) as stream:
        return ctx.provider.upload_requests(iter(lambda: stream.read(UPLOAD_CHUNK), b""), info.size, display_name)


def _inline_requests(ctx: Context, shard: Shard) -> list[dict]:
    with ctx.blobs.open_read(shard.requests_uri) as stream:
        return [orjson.loads(line) for line in stream if line.strip()]
