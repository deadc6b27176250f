"""Staging: read the landed object, streaming, into shards of neutral records, checkpointed shard by shard.

Each input shard is a records file (`shared.services.records`) cut when the next record would pass a
bound: estimated tokens (a batch's tokens count against the provider's enqueued-tokens quota), rows and
request bytes (the provider's batch limits), and record bytes (what `complete` holds in memory). When a
shard's file is durable, one transaction creates its shard document (STAGED: waiting for capacity) and
moves the job's staging position, together. So:
- a delivery resumes at the last checkpoint and never stages a committed shard again;
- a resumed read starts where the last one stopped: the reader's position (`shared.ingest.ReadPosition`)
  is saved with each checkpoint, and a plain object is opened there with a ranged read (a gzip one is
  inflated from its start, unparsed, up to it). The record that did not fit the last shard is saved
  beside it (`carry`) and opens the next one; the ids read so far (to find duplicates) are saved when an
  invocation hands on, and the ids of shards staged after that are added back from their records files;
- shards are admitted while staging goes on, so a long input starts embedding before it is read through;
- an invocation stages for at most `stage_budget_seconds`, then hands the rest to the next one (a message
  on the stage topic), so no invocation's work grows with the input.
Keys are record numbers in the file, so a resumed read writes the same keys. Input problems are written
per shard segment and joined into `input-errors.jsonl` when the job ends. A worker that lost the job
while staging (its lease lapsed) deletes what it wrote if the job has ended meanwhile.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from shared.domain.capabilities import Capabilities
from shared.domain.jobs import Estimate, Job, JobState, Shard, ShardOrigin
from shared.domain.paths import JobPaths
from shared.domain.records import InputProblem
from shared.errors import NotFound, PermanentError
from shared.ingest import InputFormat, ReadPosition, SeenIds, estimate_tokens, read_source
from shared.ingest.splitter import SPLITTER_VERSION
from shared.ports import JobTx
from shared.services.context import Context
from shared.services.leasing import LeaseLost, commit, save
from shared.services.records import JSONL, RecordsWriter, ShardTotals, iter_records, record_line

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

    def abort(self, exc: BaseException) -> None:
        if self.records is not None:
            self.records.abort(exc)
        self.files.__exit__(type(exc), exc, exc.__traceback__)


def stage_input(ctx: Context, job: Job, capabilities: Capabilities, *, held: bool = False) -> StageOutcome:
    """Stage `job`'s source (held under lease) from where the last checkpoint left it, until the input ends,
    a fatal problem ends it, or the time budget runs out (then `done` is False: hand the rest on).
    `held`: its shards stay out of the queue (no ledger) until the caller opens them. Raises
    `PermanentError` when the saved position cannot be resumed (the pipeline's reading changed meanwhile)."""
    settings = ctx.settings
    staging = job.staging
    paths = JobPaths.for_source(job.source, settings.output_bucket, settings.output_prefix)
    bounds = shard_bounds(ctx, capabilities)
    resume = ReadPosition.from_dict(staging.position) if staging.position else None
    if resume is None:
        staging.splitter_version = SPLITTER_VERSION
    segment = _Segment(number=staging.segments)
    fatal: InputProblem | None = None
    key = staging.next_key
    try:
        with ctx.blobs.open_read(job.source.uri, job.source.generation, resume.open_at if resume else 0) as stream:
            reader = _reader(ctx, job, paths, stream, resume)
            if staging.carry_uri:
                key = _open_with(ctx, paths, segment, _read(ctx, staging.carry_uri), key)
            for item in reader:
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
                    segment = _checkpoint(ctx, job, paths, segment, capabilities, held, reader.position(),
                                          carry=line)
                    if ctx.elapsed() >= settings.stage_budget_seconds:
                        _save_seen_ids(ctx, job, paths, reader)
                        return StageOutcome(done=False)
                key = _open_with(ctx, paths, segment, line, key)
    except BaseException as exc:
        segment.abort(exc)
        raise
    _checkpoint(ctx, job, paths, segment, capabilities, held, reader.position(), done=True, fatal=fatal)
    return StageOutcome(done=True, fatal=fatal)


def _open_with(ctx: Context, paths: JobPaths, segment: _Segment, line: bytes, key: int) -> int:
    """Write a record's line into the segment (opening its file first); returns the next key."""
    if segment.records is None:
        segment.records = RecordsWriter(ctx, paths.input_records(segment.number))
    row = orjson.loads(line)
    segment.records.write(line, row["tokens"], len(row["text"].encode()), int(row["key"]))
    return int(row["key"]) + 1


def _reader(ctx: Context, job: Job, paths: JobPaths, stream: BinaryIO, resume: ReadPosition | None) -> Any:
    try:
        return read_source(stream, job.source, job.options, ctx.settings, resume=resume,
                           seen_ids=_seen_ids(ctx, job, paths, resume))
    except ValueError as exc:
        raise PermanentError(f"staging cannot resume where it stopped ({exc}): upload the file again") from exc


def _seen_ids(ctx: Context, job: Job, paths: JobPaths, resume: ReadPosition | None) -> SeenIds | None:
    """The ids read before the position: the last saved set, plus the ids of the segments staged after
    it and of the carried record (a set: ids already in it are not counted twice)."""
    if resume is None or resume.done or resume.format == InputFormat.DOCUMENT.value:
        return None
    staging = job.staging
    seen = SeenIds.load(_read(ctx, staging.seen_ids_uri)) if staging.seen_ids_uri else SeenIds()
    for number in range(staging.seen_ids_segments, staging.segments):
        try:
            for _, row in iter_records(ctx, paths.input_records(number)):
                seen.add(row["id"])
        except NotFound:
            continue  # a segment of problems only
    if staging.carry_uri:
        seen.add(orjson.loads(_read(ctx, staging.carry_uri))["id"])
    return seen


def _read(ctx: Context, uri: str) -> bytes:
    with ctx.blobs.open_read(uri) as stream:
        return stream.read()


def _save_seen_ids(ctx: Context, job: Job, paths: JobPaths, reader: Any) -> None:
    """Before handing on: save the ids read so far, so the next invocation need not read them back."""
    if reader.position().format == InputFormat.DOCUMENT.value:
        return
    staging = job.staging
    before = staging.seen_ids_uri
    uri = paths.seen_ids(staging.segments)
    ctx.blobs.write_bytes(uri, reader.seen_ids.dump(), "application/octet-stream")
    staging.seen_ids_uri, staging.seen_ids_segments = uri, staging.segments
    save(ctx, job)
    if before and before != uri:
        ctx.blobs.delete(before)


def _add_problem(ctx: Context, paths: JobPaths, segment: _Segment, problem: InputProblem) -> None:
    if segment.problems is None:
        segment.problems = segment.files.enter_context(ctx.blobs.open_write(paths.problems(segment.number), JSONL))
    entry = problem.to_dict()
    segment.problems.write(orjson.dumps(entry) + b"\n")
    segment.problem_count += 1
    if len(segment.sample) < 20:
        segment.sample.append(entry)


def _checkpoint(ctx: Context, job: Job, paths: JobPaths, segment: _Segment, capabilities: Capabilities,
                held: bool, position: ReadPosition, *, carry: bytes | None = None, done: bool = False,
                fatal: InputProblem | None = None) -> _Segment:
    """Make the segment's files durable (and the carried record's), then record its shard and the reader's
    position in one transaction. Returns the next segment."""
    totals = segment.records.close() if segment.records is not None else None
    segment.files.close()
    carry_uri = paths.carry(segment.number + 1) if carry is not None else None
    if carry_uri is not None:
        ctx.blobs.write_bytes(carry_uri, carry, JSONL)
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
        stored.staging.position = position.to_dict()
        stored.staging.carry_uri = carry_uri
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

    try:
        commit(ctx, job, record)
    except LeaseLost:
        _drop_if_ended(ctx, job, [paths.input_records(segment.number), paths.problems(segment.number), carry_uri])
        raise
    return _Segment(number=job.staging.segments)


def _drop_if_ended(ctx: Context, job: Job, uris: list[str | None]) -> None:
    """This worker lost the job while staging: if the job has ended (its staging dropped), what this worker
    wrote since is its own to delete; else the worker that took over writes the same names."""
    stored = ctx.jobs.get(job.job_id)
    if stored is None or stored.terminal:
        for uri in uris:
            if uri:
                ctx.blobs.delete(uri)


def _estimate(tokens: int, estimate: Estimate, capabilities: Capabilities, settings: Any) -> Estimate:
    batch = settings.price_batch_per_million if settings.price_batch_per_million is not None \
        else capabilities.price_batch_per_million
    interactive = settings.price_interactive_per_million if settings.price_interactive_per_million is not None \
        else capabilities.price_interactive_per_million
    return Estimate(input_tokens=tokens, reported_tokens=estimate.reported_tokens,
                    cost_batch_usd=round(tokens * batch / 1e6, 9),
                    cost_interactive_usd=round(tokens * interactive / 1e6, 9))
