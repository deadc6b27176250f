"""Staging: read the landed object, streaming, into shards of neutral records, checkpointed shard by shard.

Each input shard is a records file (`shared.services.records`) cut when the next record would pass a
bound: estimated tokens (a batch's tokens count against the provider's enqueued-tokens quota), rows and
request bytes (the provider's batch limits), and record bytes (what `complete` holds in memory). When a
shard's file is durable, one transaction creates its shard document (STAGED: waiting for capacity) and
moves the job's staging position past its last record, together. So:
- a delivery resumes at the last checkpoint and never stages a committed shard again;
- shards are admitted while staging goes on, so a long input starts embedding before it is read through;
- an invocation stages for at most `stage_budget_seconds`, then hands the rest to the next one (a message
  on the stage topic), so no invocation's work grows with the input.
Keys are record numbers in the file, so a resumed read writes the same keys. Input problems are written
per shard segment and joined into `input-errors.jsonl` when the job ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from shared.domain.capabilities import Capabilities
from shared.domain.jobs import Estimate, Job, JobState, Shard, ShardOrigin
from shared.domain.paths import JobPaths
from shared.domain.records import InputProblem, Record
from shared.ingest import estimate_tokens, read_source
from shared.ports import JobTx
from shared.services.context import Context
from shared.services.leasing import commit
from shared.services.records import JSONL, RecordsWriter, ShardTotals, record_line

__all__ = ["ShardBounds", "StageOutcome", "shard_bounds", "stage_input"]


@dataclass(frozen=True)
class ShardBounds:
    tokens: int
    rows: int
    request_bytes: int
    record_bytes: int

    def fits(self, totals: ShardTotals, tokens: int, text_bytes: int, meta_bytes: int) -> bool:
        if totals.rows == 0:
            return True  # a record alone always makes a shard (records are bounded by the reader)
        return (totals.tokens + tokens <= self.tokens and totals.rows + 1 <= self.rows
                and totals.request_bytes + text_bytes + 200 <= self.request_bytes
                and totals.record_bytes + meta_bytes <= self.record_bytes)


def shard_bounds(ctx: Context, capabilities: Capabilities) -> ShardBounds:
    settings = ctx.settings
    rows = settings.max_requests_per_batch
    if capabilities.max_batch_rows is not None:
        rows = min(rows, capabilities.max_batch_rows)
    return ShardBounds(
        tokens=settings.max_tokens_per_batch, rows=rows,
        request_bytes=min(settings.file_max_bytes, capabilities.max_batch_bytes),
        record_bytes=settings.max_shard_record_bytes,
    )


@dataclass
class StageOutcome:
    done: bool  # the whole input is staged
    fatal: InputProblem | None = None  # the problem that ended the reading early (records before it count)


@dataclass
class _Segment:
    """The shard being filled, and the problems met since the last checkpoint."""

    number: int
    records: RecordsWriter | None = None
    problems: BinaryIO | None = None
    files: ExitStack = field(default_factory=ExitStack)
    problem_count: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    first_key: int = 0
    position: Any = None

    @property
    def empty(self) -> bool:
        return self.records is None and self.problem_count == 0

    def abort(self, exc: BaseException) -> None:
        if self.records is not None:
            self.records.abort(exc)
        self.files.__exit__(type(exc), exc, exc.__traceback__)


def stage_input(ctx: Context, job: Job, capabilities: Capabilities, *, held: bool = False) -> StageOutcome:
    """Stage `job`'s source (held under lease) from where the last checkpoint left it, until the input ends,
    a fatal problem ends it, or the time budget runs out (then `done` is False: hand the rest on).
    `held`: its shards stay out of the queue (no ledger) until the caller opens them."""
    settings = ctx.settings
    paths = JobPaths.for_source(job.source, settings.output_bucket, settings.output_prefix)
    bounds = shard_bounds(ctx, capabilities)
    segment = _Segment(number=job.staging.segments, first_key=job.staging.next_key)
    fatal: InputProblem | None = None
    key = job.staging.next_key
    try:
        with ctx.blobs.open_read(job.source.uri, job.source.generation) as stream:
            for item in _resumed(read_source(stream, job.source, job.options, settings), job):
                if isinstance(item, InputProblem):
                    _add_problem(ctx, paths, segment, item)
                    if item.fatal:
                        fatal = item
                    continue
                tokens = estimate_tokens(item.text)
                line = record_line(str(key), item, tokens)
                text_bytes = len(item.text.encode())
                if segment.records is not None and not bounds.fits(segment.records.totals, tokens, text_bytes,
                                                                     len(line) - text_bytes):
                    segment = _checkpoint(ctx, job, paths, segment, capabilities, held, done=False)
                    if ctx.elapsed() >= settings.stage_budget_seconds:
                        return StageOutcome(done=False)
                if segment.records is None:
                    segment.records = RecordsWriter(ctx, paths.input_records(segment.number))
                segment.records.write(line, tokens, text_bytes, key)
                key += 1
    except BaseException as exc:
        segment.abort(exc)
        raise
    _checkpoint(ctx, job, paths, segment, capabilities, held, done=True, fatal=fatal)
    return StageOutcome(done=True, fatal=fatal)


def _resumed(items: Iterator[Record | InputProblem], job: Job) -> Iterator[Record | InputProblem]:
    """The items after the last checkpoint: the reader is deterministic, so the first `next_key` records
    and `problems` problems are the ones already staged."""
    records, problems = job.staging.next_key, job.staging.problems
    for item in items:
        if isinstance(item, InputProblem) and problems and not item.fatal:
            problems -= 1
        elif isinstance(item, Record) and records:
            records -= 1
        else:
            yield item


def _add_problem(ctx: Context, paths: JobPaths, segment: _Segment, problem: InputProblem) -> None:
    if segment.problems is None:
        segment.problems = segment.files.enter_context(ctx.blobs.open_write(paths.problems(segment.number), JSONL))
    entry = problem.to_dict()
    segment.problems.write(orjson.dumps(entry) + b"\n")
    segment.problem_count += 1
    if len(segment.sample) < 20:
        segment.sample.append(entry)


def _checkpoint(ctx: Context, job: Job, paths: JobPaths, segment: _Segment, capabilities: Capabilities,
                held: bool, *, done: bool, fatal: InputProblem | None = None) -> _Segment:
    """Make the segment's files durable, then record its shard and the new position in one transaction.
    Returns the next segment."""
    totals = segment.records.close() if segment.records is not None else None
    segment.files.close()
    now = ctx.clock()
    settings = ctx.settings
    options = job.options
    provider = ctx.provider_for(options.provider)

    def record(tx: JobTx) -> None:
        stored = tx.job
        if totals is not None and totals.rows:
            index = stored.allocate_shard()
            tx.added.append(Shard(
                job_id=stored.job_id, index=index, origin=ShardOrigin.INPUT,
                records_uri=paths.input_records(segment.number), request_count=totals.rows,
                request_bytes=totals.request_bytes, record_bytes=totals.record_bytes,
                file_bytes=totals.request_bytes + provider.result_bytes(totals.rows, options.output_dimensionality),
                estimated_tokens=totals.tokens, provider=options.provider,
                ledger="" if held else capabilities.ledger_key,
                priority=options.priority, fair_key=stored.staging.fair_start + stored.staging.tokens,
                created_at=now, updated_at=now,
            ))
            stored.staging.tokens += totals.tokens
            stored.staging.next_key += totals.rows
            stored.counts.total += totals.rows
            stored.estimate = _estimate(stored.staging.tokens, stored.estimate, capabilities, settings)
        stored.staging.segments = segment.number + 1
        stored.staging.problems += segment.problem_count
        stored.input_problems.count += segment.problem_count
        stored.counts.input_problems += segment.problem_count
        for entry in segment.sample:
            stored.input_problems.add_to_sample(entry)
        if stored.input_problems.count:
            stored.input_problems.uri = paths.input_errors
        if done:
            stored.staging.done = True
            stored.staging.fatal = fatal.to_dict() if fatal is not None else None
            stored.submitted_at = now
            if stored.state == JobState.SUBMITTING and stored.counts.total:
                stored.move_to(JobState.RUNNING, now)
                stored.complete_if_done(now)

    if totals is not None or segment.problem_count or done:
        commit(ctx, job, record)
    else:
        return segment
    return _Segment(number=job.staging.segments, first_key=job.staging.next_key)


def _estimate(tokens: int, estimate: Estimate, capabilities: Capabilities, settings: Any) -> Estimate:
    batch = settings.price_batch_per_million if settings.price_batch_per_million is not None \
        else capabilities.price_batch_per_million
    interactive = settings.price_interactive_per_million if settings.price_interactive_per_million is not None \
        else capabilities.price_interactive_per_million
    return Estimate(input_tokens=tokens, reported_tokens=estimate.reported_tokens,
                    cost_batch_usd=round(tokens * batch / 1e6, 9),
                    cost_interactive_usd=round(tokens * interactive / 1e6, 9))
