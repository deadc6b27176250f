"""Staged records: one neutral JSON line per item, `{"key", "id", "text", "title"?, "metadata"?, "tokens"}`.

Staging writes them once per shard; each provider encodes its own request lines from them; `complete` maps
results back to ids, titles and metadata by key; follow-up and split shards are cut from them. Keys are the
items' record numbers in the input, so a record keeps its key through every retry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from shared.domain.jobs import Shard
from shared.domain.records import Record
from shared.ports import StagedItem
from shared.services.context import Context

__all__ = ["JSONL", "RecordsWriter", "ShardTotals", "iter_records", "record_line", "staged_items", "write_subset",
           "written_keys"]

JSONL = "application/jsonl"
#: Bytes a provider's request line adds around an item's text (keys, field names, options).
REQUEST_OVERHEAD = 200


def record_line(key: str, record: Record, tokens: int, ck: str | None = None) -> bytes:
    """A neutral record: `ck`, when reuse is on, is its content key (shared.domain.reuse)."""
    line: dict[str, Any] = {"key": key, "id": record.id, "text": record.text}
    if record.title:
        line["title"] = record.title
    if record.metadata:
        line["metadata"] = record.metadata
    line["tokens"] = tokens
    if ck:
        line["ck"] = ck
    return orjson.dumps(line) + b"\n"


@dataclass
class ShardTotals:
    """What one records file holds."""

    rows: int = 0
    tokens: int = 0
    last_key: int = -1
    request_bytes: int = 0  # about the size of a provider's input for these rows
    record_bytes: int = 0  # ids, titles and metadata: what `complete` holds in memory

    def add(self, line: bytes, tokens: int, text_bytes: int, key: int) -> None:
        self.rows += 1
        self.last_key = max(self.last_key, key)
        self.tokens += tokens
        self.request_bytes += text_bytes + REQUEST_OVERHEAD
        self.record_bytes += len(line) - text_bytes


class RecordsWriter:
    """Writes one records file; the object appears only when `close()` runs without an error."""

    def __init__(self, ctx: Context, uri: str):
        self.uri = uri
        self.totals = ShardTotals()
        self._files = ExitStack()
        self._out: BinaryIO = self._files.enter_context(ctx.blobs.open_write(uri, JSONL))

    def write(self, line: bytes, tokens: int, text_bytes: int, key: int) -> None:
        self._out.write(line)
        self.totals.add(line, tokens, text_bytes, key)

    def close(self) -> ShardTotals:
        self._files.close()
        return self.totals

    def abort(self, exc: BaseException) -> None:
        """Drop the upload: a half-written file is never committed."""
        self._files.__exit__(type(exc), exc, exc.__traceback__)


def _lines(ctx: Context, uri: str) -> Iterator[bytes]:
    with ctx.blobs.open_read(uri) as stream:
        for line in stream:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def iter_records(ctx: Context, uri: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each staged line, raw and parsed."""
    for line in _lines(ctx, uri):
        yield line, orjson.loads(line)


def staged_items(ctx: Context, uri: str) -> Callable[[], Iterator[StagedItem]]:
    """The provider's view of a records file, opened afresh on each call."""
    def items() -> Iterator[StagedItem]:
        for _, row in iter_records(ctx, uri):
            yield StagedItem(key=row["key"], text=row["text"], title=row.get("title"))

    return items


def written_keys(ctx: Context, shard: Shard) -> frozenset[str]:
    """The records keys the shards before a continuation wrote (none for any other shard)."""
    if not shard.written_keys_uri:
        return frozenset()
    with ctx.blobs.open_read(shard.written_keys_uri) as stream:
        return frozenset(stream.read().decode().split())


def write_subset(ctx: Context, source_uri: str, dest_uri: str, keep: Callable[[dict[str, Any]], bool]) -> ShardTotals:
    """Copy the rows of one records file that `keep` accepts into another (deterministic: a rerun writes the
    same file)."""
    writer = RecordsWriter(ctx, dest_uri)
    try:
        for line, row in iter_records(ctx, source_uri):
            if keep(row):
                writer.write(line, row.get("tokens", 0), len(row["text"].encode()), int(row["key"]))
    except BaseException as exc:
        writer.abort(exc)
        raise
    return writer.close()
