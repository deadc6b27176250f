"""Staging: read the landed object once, streaming, into shard files under the job's `_staging/` prefix.

Each shard has two JSONL files: `requests-N.jsonl`, exactly the Batch API's input-file format
(`{"key", "request"}`), and `records-N.jsonl` (`{"key", "id", "title"?, "metadata"?}`), which maps the
provider's results back to ids by key. Keys are the records' sequence numbers in the file, so re-staging
after a crash writes the same files. Memory holds one upload chunk per open file, whatever the input size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, BinaryIO

import orjson

from shared.config import Settings
from shared.domain.jobs import Estimate, InputProblems, Job, Shard
from shared.domain.options import JobOptions, TaskType, model_resource
from shared.domain.paths import JobPaths
from shared.domain.records import InputProblem, Record
from shared.ingest import estimate_tokens, read_source
from shared.services.context import Context

__all__ = ["PROBLEM_SAMPLE_SIZE", "request_line", "stage_input"]

PROBLEM_SAMPLE_SIZE = 20
JSONL = "application/jsonl"
_HEARTBEAT_SECONDS = 60.0


def request_line(key: str, record: Record, options: JobOptions) -> bytes:
    """One line of the Batch API's input file for `record`."""
    request: dict[str, Any] = {
        "model": model_resource(options.model),  # as the batch's own model is named
        "content": {"parts": [{"text": record.text}]},
        "outputDimensionality": options.output_dimensionality,
    }
    if options.task_type != TaskType.TASK_TYPE_UNSPECIFIED:
        request["taskType"] = options.task_type.value
    if record.title and options.task_type == TaskType.RETRIEVAL_DOCUMENT:
        request["title"] = record.title  # the API takes a title only for RETRIEVAL_DOCUMENT
    return orjson.dumps({"key": key, "request": request}) + b"\n"


def _record_line(key: str, record: Record) -> bytes:
    line: dict[str, Any] = {"key": key, "id": record.id}
    if record.title:
        line["title"] = record.title
    if record.metadata:
        line["metadata"] = record.metadata
    return orjson.dumps(line) + b"\n"


class _ShardWriter:
    """Writes records into consecutive shards, rotating by request count and bytes."""

    def __init__(self, ctx: Context, paths: JobPaths, settings: Settings):
        self._ctx = ctx
        self._paths = paths
        self._settings = settings
        self._files: ExitStack | None = None
        self._requests: BinaryIO | None = None
        self._records: BinaryIO | None = None
        self._count = self._bytes = self._tokens = 0
        self.shards: list[Shard] = []

    def add(self, key: str, request: bytes, record: bytes, tokens: int) -> None:
        full = self._count >= self._settings.max_requests_per_batch
        too_big = self._bytes + len(request) > self._settings.file_max_bytes
        if self._files is not None and (full or too_big):
            self._close_shard()
        if self._files is None:
            self._open_shard()
        self._requests.write(request)
        self._records.write(record)
        self._count += 1
        self._bytes += len(request)
        self._tokens += tokens

    def _open_shard(self) -> None:
        index = len(self.shards)
        self._files = ExitStack()
        self._requests = self._files.enter_context(self._ctx.blobs.open_write(self._paths.requests(index), JSONL))
        self._records = self._files.enter_context(self._ctx.blobs.open_write(self._paths.records(index), JSONL))
        self._count = self._bytes = self._tokens = 0

    def _close_shard(self) -> None:
        self._files.close()
        self._files = None
        index = len(self.shards)
        self.shards.append(Shard(
            index=index,
            mode=self._settings.shard_mode(self._count, self._bytes),
            request_count=self._count,
            request_bytes=self._bytes,
            estimated_tokens=self._tokens,
            requests_uri=self._paths.requests(index),
            records_uri=self._paths.records(index),
        ))

    def finish(self) -> list[Shard]:
        if self._files is not None:
            self._close_shard()
        return self.shards

    def abort(self, exc: BaseException) -> None:
        """Cancel the open uploads: a half-written shard is never committed."""
        if self._files is not None:
            self._files.__exit__(type(exc), exc, exc.__traceback__)
            self._files = None


class _ProblemLog:
    """Counts input problems, keeps the first few, and streams all of them to `input-errors.jsonl`."""

    def __init__(self, ctx: Context, uri: str):
        self._ctx = ctx
        self.uri = uri
        self._files = ExitStack()
        self._out: BinaryIO | None = None
        self.count = 0
        self.sample: list[dict[str, Any]] = []
        self.fatal: InputProblem | None = None

    def add(self, problem: InputProblem) -> None:
        self.count += 1
        if problem.fatal:
            self.fatal = problem
        entry = problem.to_dict()
        if len(self.sample) < PROBLEM_SAMPLE_SIZE:
            self.sample.append(entry)
        if self._out is None:
            self._out = self._files.enter_context(self._ctx.blobs.open_write(self.uri, JSONL))
        self._out.write(orjson.dumps(entry) + b"\n")

    def close(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self._files.close()
        else:
            self._files.__exit__(type(exc), exc, exc.__traceback__)


def stage_input(ctx: Context, job: Job, heartbeat: Callable[[], None]) -> InputProblem | None:
    """Read `job`'s source into staged shards and fill in its shards, counts, estimate and problems.

    Returns the fatal problem that ended the reading early, if any (records before it are staged).
    Deterministic: staging the same object generation twice writes the same files. `heartbeat` is
    called about once a minute so the caller can keep its lease.
    """
    settings = ctx.settings
    options = job.options
    paths = JobPaths.for_source(job.source, settings.output_bucket, settings.output_prefix)
    shards = _ShardWriter(ctx, paths, settings)
    problems = _ProblemLog(ctx, paths.input_errors)
    total = tokens = 0
    last_beat = time.monotonic()
    try:
        with ctx.blobs.open_read(job.source.uri, job.source.generation) as stream:
            for item in read_source(stream, job.source, options, settings):
                if isinstance(item, InputProblem):
                    problems.add(item)
                    continue
                key = str(total)
                item_tokens = estimate_tokens(item.text)
                shards.add(key, request_line(key, item, options), _record_line(key, item), item_tokens)
                total += 1
                tokens += item_tokens
                if time.monotonic() - last_beat > _HEARTBEAT_SECONDS:
                    heartbeat()
                    last_beat = time.monotonic()
    except BaseException as exc:
        shards.abort(exc)
        problems.close(exc)
        raise
    job.shards = shards.finish()
    problems.close()
    job.counts.total = total
    job.counts.input_problems = problems.count
    job.input_problems = InputProblems(
        count=problems.count, sample=problems.sample, uri=problems.uri if problems.count else None,
    )
    job.estimate = Estimate(
        input_tokens=tokens,
        cost_batch_usd=round(tokens * settings.price_batch_per_million / 1e6, 9),
        cost_interactive_usd=round(tokens * settings.price_interactive_per_million / 1e6, 9),
    )
    job.staged = True
    return problems.fatal
