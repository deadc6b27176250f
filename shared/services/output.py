"""Writing one shard's results: L2-normalised vectors to JSONL and Parquet, failed items aside.

Results stream from the provider one at a time; each vector goes at once into a float32 block of
`BLOCK_ROWS` rows, and each full block is normalised at once (numpy) and appended to both files, so memory
holds one block of vectors plus the shard's key -> (id, title, metadata) map, whatever the result size.
That map keeps each item's metadata as its raw JSON bytes (parsed one block at a time, when written), and
staging cuts shards at `max_shard_record_bytes` of ids, titles and metadata: so the map is bounded by that
setting, whatever the metadata.
Output files have fixed names per shard: writing a shard again writes the same files.
Bounded: it writes at most `max_rows` items, then says what it wrote (`Written.keys`, `Written.consumed`)
so that a continuation shard writes the rest (`shared.services.complete`). Where it stops depends on the
results alone, never on the time taken: a rerun, or a second worker, writes the same bytes.

`embeddings-N.jsonl`: one line per item, `{"id", "embedding", ...metadata}` (Vertex AI Vector Search's
import layout; metadata keys named `id` or `embedding` are written as `metadata_id`, `metadata_embedding`).
`embeddings-N.parquet`: `id` string, `embedding` fixed_size_list<float32>[dims], `title` if any, then one
string column per metadata key of the shard (non-string values JSON-encoded; a key named like one of the
columns before it becomes `metadata_<key>`); the embedding column is
stored plain (no dictionary) and uncompressed, the other columns zstd-compressed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from shared.domain.jobs import ErrorInfo, FileRef, Shard, ShardOrigin, ShardOutput
from shared.domain.paths import JobPaths
from shared.logging import get_logger
from shared.ports import EmbeddingCache, ItemResult
from shared.services.batches import provider_of
from shared.services.context import Context
from shared.services.records import iter_records

__all__ = ["BLOCK_ROWS", "Written", "file_ref", "load_records", "write_shard_output"]

log = get_logger(__name__)

BLOCK_ROWS = 2048
_RESERVED = ("id", "embedding")


@dataclass(frozen=True, slots=True)
class _Item:
    id: str
    title: str | None
    raw_metadata: bytes | None  # JSON, parsed only when the item is written
    content_key: str | None = None  # shared.domain.reuse.content_key of the record

    @property
    def metadata(self) -> dict[str, Any]:
        return orjson.loads(self.raw_metadata) if self.raw_metadata else {}


@dataclass
class ShardRecords:
    items: dict[str, _Item]
    metadata_keys: list[str]  # every metadata key of the shard, sorted (the Parquet columns)
    with_title: bool


def load_records(ctx: Context, uri: str, skip: frozenset[str] = frozenset()) -> ShardRecords:
    """The key -> (id, title, metadata) map of one shard's staged records, but for the keys in `skip`."""
    items: dict[str, _Item] = {}
    keys: set[str] = set()
    with_title = False
    for _, row in iter_records(ctx, uri):
        if row["key"] in skip:
            continue
        metadata = row.get("metadata")
        if metadata:
            keys.update(metadata)
        with_title = with_title or bool(row.get("title"))
        items[row["key"]] = _Item(row["id"], row.get("title"), orjson.dumps(metadata) if metadata else None,
                                  row.get("ck"))
    return ShardRecords(items, sorted(keys), with_title)


def _jsonl_row(item: _Item, metadata: dict[str, Any], vector: np.ndarray) -> bytes:
    row: dict[str, Any] = {"id": item.id, "embedding": vector}
    for key, value in metadata.items():
        row[f"metadata_{key}" if key in _RESERVED else key] = value
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _column_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class _ParquetSink:
    def __init__(self, stream: Any, dims: int, records: ShardRecords):
        self.dims = dims
        self.with_title = records.with_title
        self.columns = records.metadata_keys
        fields = [pa.field("id", pa.string(), nullable=False), pa.field("embedding", pa.list_(pa.float32(), dims))]
        if self.with_title:
            fields.append(pa.field("title", pa.string()))
        taken = {field.name for field in fields}
        fields += [pa.field(f"metadata_{key}" if key in taken else key, pa.string()) for key in self.columns]
        self.schema = pa.schema(fields)
        # float32 vectors barely compress, and trying a dictionary on them costs more than the rest of the
        # writing: the embedding column is stored plain and uncompressed, the other columns zstd.
        others = [field.name for field in fields if field.name != "embedding"]
        self.writer = pq.ParquetWriter(stream, self.schema, use_dictionary=others,
                                       compression={name: "zstd" for name in others} | {"embedding": "none"})

    def write(self, items: list[_Item], metadata: list[dict[str, Any]], vectors: np.ndarray) -> None:
        arrays = [
            pa.array([item.id for item in items], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dims),
        ]
        if self.with_title:
            arrays.append(pa.array([item.title for item in items], pa.string()))
        arrays += [pa.array([_column_text(m.get(c)) for m in metadata], pa.string()) for c in self.columns]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Written:
    """What `write_shard_output` wrote. `keys` is None when it wrote every item; when it stopped early, the
    keys it wrote (good or failed), and `consumed` the results it read (the batch's, past those skipped)."""

    output: ShardOutput
    consumed: int
    keys: set[str] | None = None


def write_shard_output(ctx: Context, paths: JobPaths, shard: Shard, dims: int, *, reuse: bool,
                       skip: frozenset[str] = frozenset(), max_rows: int | None = None) -> Written:
    """Write one shard's results: a SUCCEEDED batch's, fetched and normalised, or a cache shard's stored
    vectors, written as they were (so an unchanged passage's vector is byte-identical to its first run).
    Returns what was written, with the tokens the provider reported for its items (None when it reports
    none) and the cache entries given (`reuse`: each embedded item's vector is stored under its content key).
    A continuation skips the batch's first `shard.results_from` results and the records keys in `skip`.

    An item fails (into `failed-N.jsonl`) when the provider reports an error for it, when its vector has
    the wrong dimensions or is all zeros (it cannot be normalised), or when no result names its key (known
    only once every result is read: not when `max_rows` stopped the loop).
    """
    cached = shard.origin == ShardOrigin.CACHE
    shard_records = load_records(ctx, shard.records_uri, skip)
    records = shard_records.items
    writer = _ShardWriter(ctx, paths, shard, dims, shard_records, normalise=not cached,
                          cache=ctx.cache if reuse and not cached else None)
    done: set[str] = set()  # keys with a result, good or failed
    consumed, stopped = 0, False
    with writer:
        results = _cached_results(ctx, shard, skip) if cached else provider_of(ctx, shard).iter_results(
            shard.batch_name, shard.results_from)
        for result in results:
            consumed += 1
            item = records.get(result.key)
            if item is None or result.key in done:
                log.warning("ignored a result for an unknown or repeated key", key=result.key[:100], shard=shard.index)
            else:
                done.add(result.key)
                writer.add(result.key, item, result)
            if max_rows is not None and len(done) >= max_rows and len(done) < len(records):
                stopped = True
                break
        if not stopped:
            for key in sorted(records.keys() - done, key=int):
                writer.fail(key, records[key], ErrorInfo(code="MISSING_RESULT", message="the provider returned no result for this item"))
    output = ShardOutput(
        embeddings=file_ref(ctx, paths.embeddings(shard.index), writer.succeeded),
        parquet=file_ref(ctx, paths.parquet(shard.index), writer.succeeded),
        failed_items_uri=paths.failed_items(shard.index) if writer.failed else None,
        succeeded=writer.succeeded,
        failed=writer.failed,
        reported_tokens=writer.reported,
        cache_writes=writer.cache_writes,
    )
    return Written(output, consumed, done if stopped else None)


def _cached_results(ctx: Context, shard: Shard, skip: frozenset[str]) -> Iterator[ItemResult]:
    """A cache shard's items, with the vectors staging found for them (stored as float32 bytes)."""
    for _, row in iter_records(ctx, shard.records_uri):
        if row["key"] not in skip:
            yield ItemResult(key=row["key"], vector=base64.b64decode(row["vector"]))


class _ShardWriter:
    """The files of one shard: embeddings JSONL and Parquet, failed items, and its part of the job's index."""

    def __init__(self, ctx: Context, paths: JobPaths, shard: Shard, dims: int, records: ShardRecords, *,
                 normalise: bool, cache: EmbeddingCache | None):
        self._ctx, self._paths, self._shard, self._dims = ctx, paths, shard, dims
        self._records, self._normalise, self._cache = records, normalise, cache
        self._files = ExitStack()
        self._rows = np.empty((BLOCK_ROWS, dims), dtype=np.float32)  # one block of vectors, reused
        self._good: list[_Item] = []
        self.succeeded = self.failed = self.cache_writes = 0
        self.reported: int | None = None

    def __enter__(self) -> _ShardWriter:
        index, open_write = self._shard.index, self._ctx.blobs.open_write
        self._jsonl = self._files.enter_context(open_write(self._paths.embeddings(index), "application/jsonl"))
        parquet_stream = self._files.enter_context(open_write(self._paths.parquet(index), "application/vnd.apache.parquet"))
        self._failures = self._files.enter_context(open_write(self._paths.failed_items(index), "application/jsonl"))
        self._index = self._files.enter_context(open_write(self._paths.index_part(index), "application/jsonl"))
        self._parquet = _ParquetSink(parquet_stream, self._dims, self._records)
        self._files.callback(self._parquet.close)  # before its stream closes, also when an error interrupts
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        if exc[0] is None and self._good:
            self._flush()
        return self._files.__exit__(*exc)

    def add(self, key: str, item: _Item, result: ItemResult) -> None:
        if result.tokens is not None:
            self.reported = (self.reported or 0) + result.tokens
        problem = _problem(result, self._dims)
        if problem is not None:
            self.fail(key, item, problem)
            return
        row = self._rows[len(self._good)]
        if result.vector is not None:
            row[:] = np.frombuffer(result.vector, dtype=np.float32)
        else:
            row[:] = result.values  # to float32 at once: the block never holds Python floats
        self._good.append(item)
        self.succeeded += 1
        if len(self._good) == BLOCK_ROWS:
            self._flush()

    def fail(self, key: str, item: _Item, error: ErrorInfo) -> None:
        self._failures.write(orjson.dumps({"key": key, "id": item.id, "code": error.code, "message": error.message}) + b"\n")
        self.failed += 1

    def _flush(self) -> None:
        good = self._good
        matrix = self._rows[: len(good)]
        if self._normalise:
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        metadata = [item.metadata for item in good]
        self._jsonl.write(b"".join(_jsonl_row(item, meta, row) for item, meta, row in zip(good, metadata, matrix, strict=True)))
        self._parquet.write(good, metadata, matrix)
        self._index.write(b"".join(orjson.dumps({"id": item.id, "hash": item.content_key[:16]}) + b"\n"
                                   for item in good if item.content_key))
        if self._cache is not None:  # each vector under the key of the very record it was matched to by key
            entries = {item.content_key: row.tobytes() for item, row in zip(good, matrix, strict=True) if item.content_key}
            self._cache.put_many(entries)
            self.cache_writes += len(entries)
        good.clear()


def _problem(result: ItemResult, dims: int) -> ErrorInfo | None:
    if result.error is not None:
        return result.error
    if result.vector is not None:
        return None if len(result.vector) == 4 * dims else ErrorInfo(
            code="DIMENSION_MISMATCH", message=f"expected {dims} dimensions, got {len(result.vector) // 4}")
    if result.values is None or len(result.values) != dims:
        got = 0 if result.values is None else len(result.values)
        return ErrorInfo(code="DIMENSION_MISMATCH", message=f"expected {dims} dimensions, got {got}")
    if not any(result.values):
        return ErrorInfo(code="ZERO_VECTOR", message="the provider returned an all-zero vector, which cannot be normalised")
    return None


def file_ref(ctx: Context, uri: str, rows: int) -> FileRef:
    """What the job records of a written file: its size and checksums as stored."""
    info = ctx.blobs.stat(uri)
    return FileRef(uri=uri, size=info.size if info else 0, crc32c=info.crc32c if info else None,
                   md5=info.md5 if info else None, rows=rows)
