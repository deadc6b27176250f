"""What changed since the previous generation of a source, for downstream indexes.

- `index.jsonl` lists every id a job embedded with its content hash (`{"id", "hash"}`: the first 16 hex
  digits of its content key, `shared.domain.reuse`). It is composed server-side from the shards' parts.
- `changes.jsonl` compares it with the index of the newest complete generation before it (named by the
  source's `latest.json`): one `{"id", "change"}` line per id `added`, `changed` (its content hash moved)
  or `removed`. The counts, and the previous manifest, go in the manifest and the completion event. The
  first generation of a source has every id added.
- `latest.json` (beside the generations' folders) names the newest complete generation's manifest and
  index. A job replaces it only with a newer generation than the one it names, so an older generation
  finishing late never hides a newer one.
Memory: 16 bytes per id of each index (64-bit hashes of the id and of the content in numpy arrays); each
index is streamed twice, never held as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import blake2b

import numpy as np
import orjson

from shared.domain.jobs import ChangeCounts, Job, Shard
from shared.domain.paths import JobPaths
from shared.errors import NotFound
from shared.logging import get_logger
from shared.services.context import Context
from shared.services.records import JSONL

__all__ = ["point_latest", "write_index_and_changes"]

log = get_logger(__name__)


def write_index_and_changes(ctx: Context, job: Job, paths: JobPaths, written: list[Shard]) -> ChangeCounts | None:
    """Compose the job's index, then write its changes against the previous generation's; None when the job
    embedded nothing with a content hash."""
    parts = [p for p in (paths.index_part(s.index) for s in written) if ctx.blobs.stat(p) is not None]
    if not parts:
        return None
    ctx.blobs.compose(parts, paths.index, JSONL)
    previous = _latest(ctx, paths)
    if previous is not None and int(previous.get("generation", 0)) >= int(job.source.generation):
        previous = None  # a newer generation ended first: this one is compared with nothing
    old_index = previous.get("index") if previous else None
    current = _hashes(ctx, paths.index)
    before = _hashes(ctx, old_index) if old_index else _Hashes.empty()
    counts = ChangeCounts(previous_manifest=previous.get("manifest") if previous else None, uri=paths.changes)
    with ctx.blobs.open_write(paths.changes, JSONL) as out:
        for record_id, change in _compare(ctx, paths.index, current, old_index, before):
            out.write(orjson.dumps({"id": record_id, "change": change}) + b"\n")
            setattr(counts, change, getattr(counts, change) + 1)
    counts.unchanged = len(current) - counts.added - counts.changed
    return counts


def point_latest(ctx: Context, job: Job, paths: JobPaths) -> None:
    """Name this generation in the source's `latest.json`, unless a newer one is named there already."""
    current = _latest(ctx, paths)
    if current is not None and int(current.get("generation", 0)) > int(job.source.generation):
        return
    ctx.blobs.write_bytes(paths.latest, orjson.dumps({
        "job_id": job.job_id, "generation": job.source.generation, "manifest": paths.manifest,
        "index": paths.index if job.output and job.output.changes else None,
    }), "application/json")


def _latest(ctx: Context, paths: JobPaths) -> dict | None:
    try:
        with ctx.blobs.open_read(paths.latest) as stream:
            return orjson.loads(stream.read())
    except NotFound:
        return None
    except orjson.JSONDecodeError:
        log.warning("latest.json is unreadable: comparing with nothing", uri=paths.latest)
        return None


class _Hashes:
    """Ids and content hashes of one index, sorted by id hash."""

    def __init__(self, ids: np.ndarray, contents: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.ids, self.contents = ids[order], contents[order]

    @classmethod
    def empty(cls) -> _Hashes:
        return cls(np.empty(0, np.uint64), np.empty(0, np.uint64))

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, id_hash: int) -> int | None:
        """The content hash of an id, or None when the index does not hold it."""
        at = int(np.searchsorted(self.ids, np.uint64(id_hash)))
        return int(self.contents[at]) if at < len(self.ids) and int(self.ids[at]) == id_hash else None


def _id_hash(record_id: str) -> int:
    return int.from_bytes(blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _rows(ctx: Context, uri: str) -> Iterator[tuple[str, int, int]]:
    with ctx.blobs.open_read(uri) as stream:
        for line in stream:
            if line.strip():
                row = orjson.loads(line)
                yield row["id"], _id_hash(row["id"]), int(row["hash"], 16)


def _hashes(ctx: Context, uri: str) -> _Hashes:
    ids, contents = [], []
    try:
        for _, id_hash, content in _rows(ctx, uri):
            ids.append(id_hash)
            contents.append(content)
    except NotFound:
        log.warning("the previous generation's index is gone: comparing with nothing", uri=uri)
        return _Hashes.empty()
    return _Hashes(np.array(ids, np.uint64), np.array(contents, np.uint64))


def _compare(ctx: Context, index: str, current: _Hashes, old_index: str | None,
             before: _Hashes) -> Iterator[tuple[str, str]]:
    for record_id, id_hash, content in _rows(ctx, index):
        old = before.find(id_hash)
        if old is None:
            yield record_id, "added"
        elif old != content:
            yield record_id, "changed"
    if old_index and len(before):
        for record_id, id_hash, _ in _rows(ctx, old_index):
            if current.find(id_hash) is None:
                yield record_id, "removed"
