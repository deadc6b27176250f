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

import base64
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO

import orjson

from shared.domain.capabilities import Capabilities
from shared.domain.jobs import Estimate, Job, JobState, Shard, ShardOrigin, ShardState
from shared.domain.paths import JobPaths
from shared.domain.records import InputProblem, Record
from shared.domain.reuse import CachePrices, content_key
from shared.errors import NotFound, PermanentError
from shared.ingest import InputFormat, ReadPosition, SeenIds, estimate_tokens, read_source
from shared.ingest.splitter import SPLITTER_VERSION
from shared.ports import JobTx
from shared.services import messages
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


#: Records looked up in the cache at once (one batched read of documents).
LOOKUP_BATCH = 256


@dataclass(frozen=True)
class _Line:
    """One record as staged: its neutral line, and what the shard bounds and the cache need of it."""

    key: int
    line: bytes
    tokens: int
    text_bytes: int
    id: str
    ck: str | None

    @classmethod
    def of(cls, key: int, record: Record, tokens: int, ck: str | None) -> _Line:
        return cls(key, record_line(str(key), record, tokens, ck), tokens, len(record.text.encode()), record.id, ck)

    @classmethod
    def parse(cls, line: bytes) -> _Line:
        """A line as `of` made it (without its newline, as split from a file)."""
        row = orjson.loads(line)
        return cls(int(row["key"]), line.rstrip(b"\n") + b"\n", row["tokens"], len(row["text"].encode()), row["id"],
                   row.get("ck"))

    def cached(self, vector: bytes) -> bytes:
        """Its line in a cache shard: no text (it is not sent), the vector found for it instead."""
        row = orjson.loads(self.line)
        del row["text"]
        row["vector"] = base64.b64encode(vector).decode()
        return orjson.dumps(row) + b"\n"


@dataclass
class _Segment:
    """The shards being filled (records to send; records found in the cache), and the problems met since
    the last checkpoint."""

    number: int
    records: RecordsWriter | None = None
    cached: RecordsWriter | None = None
    problems: BinaryIO | None = None
    files: ExitStack = field(default_factory=ExitStack)
    problem_count: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)

    def abort(self, exc: BaseException) -> None:
        for writer in (self.records, self.cached):
            if writer is not None:
                writer.abort(exc)
        self.files.__exit__(type(exc), exc, exc.__traceback__)


class _Lookahead:
    """The records read, in batches of `LOOKUP_BATCH` each looked up in the cache at once, with the vector
    found for each (or None). `rest()`: the records read but not given yet."""

    def __init__(self, carried: list[_Line], fresh: Iterator[_Line], lookup: Any):
        self._queue = deque(carried)
        self._fresh = fresh
        self._lookup = lookup
        self.reads = 0

    def __iter__(self) -> Iterator[tuple[_Line, bytes | None]]:
        queue = self._queue
        while True:
            while len(queue) < LOOKUP_BATCH and (line := next(self._fresh, None)) is not None:
                queue.append(line)
            if not queue:
                return
            keys = [line.ck for line in queue if line.ck]
            found = self._lookup(keys) if self._lookup is not None and keys else {}
            self.reads += len(keys)
            while queue:
                line = queue.popleft()
                yield line, found.get(line.ck)

    def rest(self) -> list[_Line]:
        return list(self._queue)


def stage_input(ctx: Context, job: Job, capabilities: Capabilities, *, held: bool = False) -> StageOutcome:
    """Stage `job`'s source (held under lease) from where the last checkpoint left it, until the input ends,
    a fatal problem ends it, or the time budget runs out (then `done` is False: hand the rest on).
    `held`: its shards stay out of the queue (no ledger) until the caller opens them. Raises
    `PermanentError` when the saved position cannot be resumed (the pipeline's reading changed meanwhile)."""
    return _Stager(ctx, job, capabilities, held).run()


class _Stager:
    def __init__(self, ctx: Context, job: Job, capabilities: Capabilities, held: bool):
        self.ctx, self.job, self.capabilities, self.held = ctx, job, capabilities, held
        settings = ctx.settings
        self.paths = JobPaths.for_source(job.source, settings.output_bucket, settings.output_prefix)
        self.bounds = shard_bounds(ctx, capabilities)
        self.reuse = ctx.cache is not None and settings.reuse_embeddings and job.options.reuse
        self.segment = _Segment(number=job.staging.segments)
        self.fatal: InputProblem | None = None
        self.key = job.staging.next_key
        self.reads_counted = 0

    def run(self) -> StageOutcome:
        ctx, job, staging = self.ctx, self.job, self.job.staging
        resume = ReadPosition.from_dict(staging.position) if staging.position else None
        if resume is None:
            staging.splitter_version = SPLITTER_VERSION
        try:
            with ctx.blobs.open_read(job.source.uri, job.source.generation, resume.open_at if resume else 0) as stream:
                self.reader = self._reader(stream, resume)
                carried = [_Line.parse(line) for line in _read(ctx, staging.carry_uri).splitlines()] \
                    if staging.carry_uri else []
                if carried:
                    self.key = carried[-1].key + 1
                self.ahead = _Lookahead(carried, self._records(), ctx.cache.get_many if self.reuse else None)
                for line, vector in self.ahead:
                    cache_line = line.cached(vector) if vector is not None else None
                    if not self._fits(line, cache_line):
                        self._checkpoint(carry=[line, *self.ahead.rest()])
                        if ctx.elapsed() >= ctx.settings.stage_budget_seconds:
                            self._save_seen_ids()
                            return StageOutcome(done=False)
                    self._write(line, cache_line)
        except BaseException as exc:
            self.segment.abort(exc)
            raise
        self._checkpoint(done=True)
        return StageOutcome(done=True, fatal=self.fatal)

    # -- reading ------------------------------------------------------------------------------------

    def _reader(self, stream: BinaryIO, resume: ReadPosition | None) -> Any:
        try:
            return read_source(stream, self.job.source, self.job.options, self.ctx.settings, resume=resume,
                               seen_ids=self._seen_ids(resume))
        except ValueError as exc:
            raise PermanentError(f"staging cannot resume where it stopped ({exc}): upload the file again") from exc

    def _records(self) -> Iterator[_Line]:
        options = self.job.options
        for item in self.reader:
            if isinstance(item, InputProblem):
                self._add_problem(item)
                if item.fatal:
                    self.fatal = item
                continue
            ck = content_key(options.provider, options.model, options.task_type, options.output_dimensionality,
                             item.title, item.text)  # also the content hash of the job's index
            yield _Line.of(self.key, item, estimate_tokens(item.text), ck)
            self.key += 1

    def _seen_ids(self, resume: ReadPosition | None) -> SeenIds | None:
        """The ids read before the position: the last saved set, plus the ids of the segments staged after
        it and of the carried records (a set: ids already in it are not counted twice)."""
        if resume is None or resume.done or resume.format == InputFormat.DOCUMENT.value:
            return None
        ctx, staging, paths = self.ctx, self.job.staging, self.paths
        seen = SeenIds.load(_read(ctx, staging.seen_ids_uri)) if staging.seen_ids_uri else SeenIds()
        for number in range(staging.seen_ids_segments, staging.segments):
            for uri in (paths.input_records(number), paths.cache_records(number)):
                try:
                    for _, row in iter_records(ctx, uri):
                        seen.add(row["id"])
                except NotFound:
                    continue  # no such shard in that segment
        if staging.carry_uri:
            for line in _read(ctx, staging.carry_uri).splitlines():
                seen.add(orjson.loads(line)["id"])
        return seen

    def _save_seen_ids(self) -> None:
        """Before handing on: save the ids read so far, so the next invocation need not read them back."""
        if self.reader.position().format == InputFormat.DOCUMENT.value:
            return
        ctx, job, staging = self.ctx, self.job, self.job.staging
        before = staging.seen_ids_uri
        uri = self.paths.seen_ids(staging.segments)
        ctx.blobs.write_bytes(uri, self.reader.seen_ids.dump(), "application/octet-stream")
        staging.seen_ids_uri, staging.seen_ids_segments = uri, staging.segments
        save(ctx, job)
        if before and before != uri:
            ctx.blobs.delete(before)

    # -- writing ------------------------------------------------------------------------------------

    def _fits(self, line: _Line, cache_line: bytes | None) -> bool:
        segment, bounds = self.segment, self.bounds
        if cache_line is not None:
            return segment.cached is None or bounds.fits(segment.cached.totals, 0, 0, len(cache_line))
        return segment.records is None or bounds.fits(segment.records.totals, line.tokens, line.text_bytes,
                                                      len(line.line) - line.text_bytes)

    def _write(self, line: _Line, cache_line: bytes | None) -> None:
        segment = self.segment
        if cache_line is not None:
            if segment.cached is None:
                segment.cached = RecordsWriter(self.ctx, self.paths.cache_records(segment.number))
            segment.cached.write(cache_line, line.tokens, 0, line.key)
            return
        if segment.records is None:
            segment.records = RecordsWriter(self.ctx, self.paths.input_records(segment.number))
        segment.records.write(line.line, line.tokens, line.text_bytes, line.key)

    def _add_problem(self, problem: InputProblem) -> None:
        segment = self.segment
        if segment.problems is None:
            segment.problems = segment.files.enter_context(
                self.ctx.blobs.open_write(self.paths.problems(segment.number), JSONL))
        entry = problem.to_dict()
        segment.problems.write(orjson.dumps(entry) + b"\n")
        segment.problem_count += 1
        if len(segment.sample) < 20:
            segment.sample.append(entry)

    def _checkpoint(self, *, carry: list[_Line] | None = None, done: bool = False) -> None:
        """Make the segment's files durable (and the carried records'), then record its shards and the
        reader's position in one transaction; a new segment follows."""
        ctx, job, paths, segment = self.ctx, self.job, self.paths, self.segment
        sent = segment.records.close() if segment.records is not None else None
        cached = segment.cached.close() if segment.cached is not None else None
        segment.files.close()
        carry_uri = paths.carry(segment.number + 1) if carry else None
        if carry_uri is not None:
            ctx.blobs.write_bytes(carry_uri, b"".join(line.line for line in carry), JSONL)
        position = self.reader.position()
        next_key = carry[0].key if carry else self.key
        reads, self.reads_counted = self.ahead.reads - self.reads_counted, self.ahead.reads
        to_write: list[int] = []

        def record(tx: JobTx) -> None:
            stored = tx.job
            if sent is not None and sent.rows:
                tx.added.append(self._input_shard(stored, sent))
                stored.staging.tokens += sent.tokens
            if cached is not None and cached.rows:
                tx.added.append(self._cache_shard(stored, cached))
                to_write.append(tx.added[-1].index)
                stored.estimate.reused_tokens += cached.tokens
            rows = (sent.rows if sent else 0) + (cached.rows if cached else 0)
            stored.counts.total += rows
            stored.estimate.cache_reads += reads
            stored.estimate = _estimate(stored, self.capabilities, ctx.settings)
            staging = stored.staging
            staging.next_key = next_key
            staging.segments = segment.number + 1
            staging.position = position.to_dict()
            staging.carry_uri = carry_uri
            staging.problems += segment.problem_count
            stored.input_problems.count += segment.problem_count
            stored.counts.input_problems += segment.problem_count
            for entry in segment.sample:
                stored.input_problems.add_to_sample(entry)
            if stored.input_problems.count:
                stored.input_problems.uri = paths.input_errors
            if done:
                staging.done = True
                staging.fatal = self.fatal.to_dict() if self.fatal is not None else None
                stored.submitted_at = ctx.clock()
                if stored.state == JobState.SUBMITTING and stored.counts.total:
                    stored.move_to(JobState.RUNNING, ctx.clock())
                    stored.complete_if_done(ctx.clock())

        try:
            commit(ctx, job, record)
        except LeaseLost:
            _drop_if_ended(ctx, job, [paths.input_records(segment.number), paths.cache_records(segment.number),
                                      paths.problems(segment.number), carry_uri])
            raise
        if not self.held:
            for index in to_write:
                messages.write_shard(ctx, job.job_id, index)
        self.segment = _Segment(number=job.staging.segments)

    def _input_shard(self, job: Job, totals: ShardTotals) -> Shard:
        """A shard of records to send: STAGED, it waits for capacity (held: outside the queue)."""
        options, now = job.options, self.ctx.clock()
        provider = self.ctx.provider_for(options.provider)
        return Shard(
            job_id=job.job_id, index=job.allocate_shard(), origin=ShardOrigin.INPUT,
            records_uri=self.paths.input_records(self.segment.number), request_count=totals.rows,
            request_bytes=totals.request_bytes, record_bytes=totals.record_bytes,
            file_bytes=totals.request_bytes + provider.result_bytes(totals.rows, options.output_dimensionality),
            estimated_tokens=totals.tokens, provider=options.provider, write_rows=self.ctx.settings.complete_max_rows,
            ledger="" if self.held else self.capabilities.ledger_key,
            priority=options.priority, fair_key=job.staging.fair_start + job.staging.tokens,
            created_at=now, updated_at=now,
        )

    def _cache_shard(self, job: Job, totals: ShardTotals) -> Shard:
        """A shard of records found in the cache: nothing to send, it is ready to write (SUCCEEDED; due, so
        the poller hands it to `complete` again if the message is lost)."""
        options, now = job.options, self.ctx.clock()
        return Shard(
            job_id=job.job_id, index=job.allocate_shard(), origin=ShardOrigin.CACHE, state=ShardState.SUCCEEDED,
            records_uri=self.paths.cache_records(self.segment.number), request_count=totals.rows,
            record_bytes=totals.record_bytes, estimated_tokens=totals.tokens, provider=options.provider,
            write_rows=self.ctx.settings.complete_max_rows,
            priority=options.priority, succeeded=totals.rows, created_at=now, updated_at=now,
            next_poll_at=None if self.held else now + timedelta(minutes=self.ctx.settings.complete_stale_minutes),
        )


def _read(ctx: Context, uri: str) -> bytes:
    with ctx.blobs.open_read(uri) as stream:
        return stream.read()


def _drop_if_ended(ctx: Context, job: Job, uris: list[str | None]) -> None:
    """This worker lost the job while staging: if the job has ended (its staging dropped), what this worker
    wrote since is its own to delete; else the worker that took over writes the same names."""
    stored = ctx.jobs.get(job.job_id)
    if stored is None or stored.terminal:
        for uri in uris:
            if uri:
                ctx.blobs.delete(uri)


def _estimate(job: Job, capabilities: Capabilities, settings: Any) -> Estimate:
    """What the job's staged records cost to send, and what the ones found in the cache saved."""
    batch = settings.price_batch_per_million if settings.price_batch_per_million is not None \
        else capabilities.price_batch_per_million
    interactive = settings.price_interactive_per_million if settings.price_interactive_per_million is not None \
        else capabilities.price_interactive_per_million
    sent, estimate = job.staging.tokens, job.estimate
    return estimate.model_copy(update={
        "input_tokens": sent + estimate.reused_tokens,
        "cost_batch_usd": round(sent * batch / 1e6, 9),
        "cost_interactive_usd": round(sent * interactive / 1e6, 9),
        "saved_usd": round(estimate.reused_tokens * batch / 1e6, 9),
        "cache_usd": CachePrices.cost(estimate.cache_reads, estimate.cache_writes),
    })
