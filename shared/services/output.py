"""Writing one shard's results: L2-normalised vectors to JSONL and Parquet, failed items aside.

Results stream from the provider one at a time; each vector goes at once into a float32 block of
`BLOCK_ROWS` rows, and each full block is normalised at once (numpy) and appended to both files, so memory
holds one block of vectors plus the shard's key -> (id, title, metadata) map, whatever the result size.
That map keeps each item's metadata as its raw JSON bytes (parsed one block at a time, when written), and
staging cuts shards at `max_shard_record_bytes` of ids, titles and metadata: so the map is bounded by that
setting, whatever the metadata.
Output files have fixed names per shard: writing a shard again writes the same files.

`embeddings-N.jsonl`: one line per item, `{"id", "embedding", ...metadata}` (Vertex AI Vector Search's
import layout; metadata keys named `id` or `embedding` are written as `metadata_id`, `metadata_embedding`).
`embeddings-N.parquet`: `id` string, `embedding` fixed_size_list<float32>[dims], `title` if any, then one
string column per metadata key of the shard (non-string values JSON-encoded; a key named like one of the
columns before it becomes `metadata_<key>`); the embedding column is
stored plain (no dictionary) and uncompressed, the other columns zstd-compressed.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from shared.domain.jobs import ErrorInfo, FileRef, Shard, ShardOutput
from shared.domain.paths import JobPaths
from shared.logging import get_logger
from shared.ports import ItemResult
from shared.services.context import Context
from shared.services.records import iter_records

__all__ = ["BLOCK_ROWS", "file_ref", "load_records", "write_shard_output"]

log = get_logger(__name__)

BLOCK_ROWS = 2048
_RESERVED = ("id", "embedding")


@dataclass(frozen=True, slots=True)
class _Item:
    id: str
    title: str | None
    raw_metadata: bytes | None  # JSON, parsed only when the item is written

    @property
    def metadata(self) -> dict[str, Any]:
        return orjson.loads(self.raw_metadata) if self.raw_metadata else {}


@dataclass
class ShardRecords:
    items: dict[str, _Item]
    metadata_keys: list[str]  # every metadata key of the shard, sorted (the Parquet columns)
    with_title: bool


def load_records(ctx: Context, uri: str) -> ShardRecords:
    """The key -> (id, title, metadata) map of one shard's staged records."""
    items: dict[str, _Item] = {}
    keys: set[str] = set()
    with_title = False
    for _, row in iter_records(ctx, uri):
        metadata = row.get("metadata")
        if metadata:
            keys.update(metadata)
        with_title = with_title or bool(row.get("title"))
        items[row["key"]] = _Item(row["id"], row.get("title"), orjson.dumps(metadata) if metadata else None)
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


def write_shard_output(ctx: Context, paths: JobPaths, shard: Shard, dims: int) -> ShardOutput:
    """Fetch, normalise and write one SUCCEEDED shard's results. Returns what was written, with the tokens
    the provider reported for its items (None when it reports none).

    An item fails (into `failed-N.jsonl`) when the provider reports an error for it, when its vector has
    the wrong dimensions or is all zeros (it cannot be normalised), or when its key is unknown.
    """
    provider = ctx.provider_for(shard.ledger.split("~", 1)[0])
    shard_records = load_records(ctx, shard.records_uri)
    records = shard_records.items
    reported: int | None = None
    succeeded = 0
    done: set[str] = set()  # keys with a result, good or failed
    failed_keys: list[str] = []
    with ExitStack() as files:
        jsonl = files.enter_context(ctx.blobs.open_write(paths.embeddings(shard.index), "application/jsonl"))
        parquet_stream = files.enter_context(ctx.blobs.open_write(paths.parquet(shard.index), "application/vnd.apache.parquet"))
        failures = files.enter_context(ctx.blobs.open_write(paths.failed_items(shard.index), "application/jsonl"))

        def fail(key: str, error: ErrorInfo) -> None:
            failures.write(orjson.dumps({"key": key, "id": records[key].id, "code": error.code, "message": error.message}) + b"\n")
            failed_keys.append(key)

        parquet = _ParquetSink(parquet_stream, dims, shard_records)
        files.callback(parquet.close)  # before its stream closes, also when an error interrupts the writing
        rows = np.empty((BLOCK_ROWS, dims), dtype=np.float32)  # one block of vectors, reused
        good: list[_Item] = []

        def flush() -> None:
            matrix = rows[: len(good)]
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
            metadata = [item.metadata for item in good]
            jsonl.write(b"".join(_jsonl_row(item, meta, row) for item, meta, row in zip(good, metadata, matrix, strict=True)))
            parquet.write(good, metadata, matrix)
            good.clear()

        for result in provider.iter_results(shard.batch_name):
            item = records.get(result.key)
            if item is None or result.key in done:
                log.warning("ignored a result for an unknown or repeated key", key=result.key[:100], shard=shard.index)
                continue
            done.add(result.key)
            if result.tokens is not None:
                reported = (reported or 0) + result.tokens
            problem = _problem(result, dims)
            if problem is not None:
                fail(result.key, problem)
                continue
            rows[len(good)] = result.values  # to float32 at once: the block never holds Python floats
            good.append(item)
            succeeded += 1
            if len(good) == BLOCK_ROWS:
                flush()
        if good:
            flush()
        for key in sorted(records.keys() - done, key=int):
            fail(key, ErrorInfo(code="MISSING_RESULT", message="the provider returned no result for this item"))
    failed = len(failed_keys)
    return ShardOutput(
        embeddings=file_ref(ctx, paths.embeddings(shard.index), succeeded),
        parquet=file_ref(ctx, paths.parquet(shard.index), succeeded),
        failed_items_uri=paths.failed_items(shard.index) if failed else None,
        succeeded=succeeded,
        failed=failed,
        reported_tokens=reported,
    )


def _problem(result: ItemResult, dims: int) -> ErrorInfo | None:
    if result.error is not None:
        return result.error
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
