"""Where a job's files go. Every file of a job lives under its own prefix, derived from the source.

Outputs: `{OUTPUT_PREFIX}{safe source name}/{generation}/` in the output bucket; staging (internal,
deleted when the job ends): `{OUTPUT_PREFIX}_staging/{safe source name}/{generation}/`, one prefix for all
jobs so that a bucket lifecycle rule can sweep what a job that never ended left behind. The safe name
keeps the source's folders but escapes the segments a file system would treat specially (`.`, `..`,
empty) and a leading `_` (so no output lands under `_staging/`), and caps the length (object names are at
most 1,024 bytes), appending a short hash when it had to cut. So two sources never share a prefix, and no
name, however hostile, writes outside its job's prefixes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from shared.domain.jobs import SourceObject

__all__ = ["STAGING_FOLDER", "JobPaths", "parse_gs_uri"]

STAGING_FOLDER = "_staging"
_MAX_NAME_BYTES = 400


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/name` -> (bucket, name)."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, name


def _safe_segment(segment: str) -> str:
    segment = segment.replace("%", "%25")  # so an escaped form never equals a literal name
    if segment in ("", ".", ".."):
        return "%" + segment.encode().hex() if segment else "%"
    return segment


def safe_name(name: str) -> str:
    safe = "/".join(_safe_segment(s) for s in name.split("/"))
    if safe.startswith("_"):
        safe = "%5F" + safe[1:]
    encoded = safe.encode()
    if len(encoded) <= _MAX_NAME_BYTES:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return encoded[: _MAX_NAME_BYTES - 13].decode(errors="ignore") + "~" + digest


@dataclass(frozen=True, slots=True)
class JobPaths:
    """The URIs of one job's outputs and staging files."""

    prefix: str  # gs://bucket/path/ (ends with a slash)
    staging: str  # gs://bucket/path/ of the staging files

    @classmethod
    def for_source(cls, source: SourceObject, output_bucket: str, output_prefix: str) -> JobPaths:
        base = output_prefix.strip("/")
        root = f"gs://{output_bucket}/{base}/" if base else f"gs://{output_bucket}/"
        job = f"{safe_name(source.name)}/{source.generation}/"
        return cls(prefix=root + job, staging=f"{root}{STAGING_FOLDER}/{job}")

    def input_records(self, segment: int) -> str:
        """Neutral records of the `segment`-th shard cut from the input (its index is allocated later)."""
        return f"{self.staging}records-{segment:06d}.jsonl"

    def cache_records(self, segment: int) -> str:
        """Records of the `segment`-th segment found in the cache, with their vectors (never sent)."""
        return f"{self.staging}cached-{segment:06d}.jsonl"

    def follow_up_records(self, parent: int) -> str:
        """The failed items of shard `parent`, tried again."""
        return f"{self.staging}records-f{parent:06d}.jsonl"

    def split_records(self, parent: int, half: int) -> str:
        return f"{self.staging}records-s{parent:06d}-{half}.jsonl"

    def problems(self, segment: int) -> str:
        """Input problems met while staging the `segment`-th input shard (joined into input-errors.jsonl)."""
        return f"{self.staging}problems-{segment:06d}.jsonl"

    def seen_ids(self, segments: int) -> str:
        """The ids read up to the checkpoint of the first `segments` segments, to find duplicates after it."""
        return f"{self.staging}seen-ids-{segments:06d}.bin"

    def carry(self, segment: int) -> str:
        """The record read last before a checkpoint, which opens the `segment`-th segment."""
        return f"{self.staging}carry-{segment:06d}.jsonl"

    def written_keys(self, shard: int) -> str:
        """The records keys shard `shard` and those it continues wrote: its continuation skips them."""
        return f"{self.staging}written-{shard:06d}.txt"

    def failed_items(self, shard: int) -> str:
        return f"{self.staging}failed-{shard:06d}.jsonl"

    def embeddings(self, shard: int) -> str:
        return f"{self.prefix}embeddings-{shard:05d}.jsonl"

    def parquet(self, shard: int) -> str:
        return f"{self.prefix}embeddings-{shard:05d}.parquet"

    def index_part(self, shard: int) -> str:
        """`{"id", "hash"}` of each item a shard embedded (joined into index.jsonl when the job ends)."""
        return f"{self.staging}index-{shard:06d}.jsonl"

    @property
    def index(self) -> str:
        """Every embedded id with its content hash: what the next generation's changes are measured against."""
        return self.prefix + "index.jsonl"

    @property
    def changes(self) -> str:
        return self.prefix + "changes.jsonl"

    @property
    def latest(self) -> str:
        """The newest complete generation of this source: `{"generation", "manifest", "index"}`."""
        return self.prefix.rsplit("/", 2)[0] + "/latest.json"

    @property
    def errors(self) -> str:
        return self.prefix + "errors.jsonl"

    @property
    def input_errors(self) -> str:
        return self.prefix + "input-errors.jsonl"

    @property
    def manifest(self) -> str:
        return self.prefix + "manifest.json"
