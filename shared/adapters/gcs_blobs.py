"""The blob store over Cloud Storage (google-cloud-storage).

Reads return the stored bytes as they are (`raw_download`: no decompressive transcoding of gzip objects,
the readers sniff gzip themselves), downloaded in 8 MiB ranges behind an `io.BufferedReader`: the library's
reader has no `peek`, so iterating its lines would call `read(1)` once per byte. Writes stream through
resumable uploads in 32 MiB chunks (one request per chunk: a 1 GB output file takes 30 requests, not
120), so memory stays about one chunk per open writer; an upload interrupted by an exception is
cancelled, never committed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from google.api_core import exceptions as gexc
from google.cloud import storage

from shared.domain.paths import parse_gs_uri
from shared.errors import NotFound, TransientError
from shared.ports import BlobInfo, BlobStore

__all__ = ["GcsBlobStore"]

CHUNK_SIZE = 8 * 1024 * 1024  # download range
WRITE_CHUNK_SIZE = 32 * 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require
_READ_BUFFER = 1024 * 1024  # served from the reader's downloaded chunk: a copy, not a request

_TRANSIENT = (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, gexc.GatewayTimeout, gexc.BadGateway)


def _info(blob: storage.Blob) -> BlobInfo:
    return BlobInfo(
        uri=f"gs://{blob.bucket.name}/{blob.name}",
        size=int(blob.size or 0),
        generation=str(blob.generation) if blob.generation is not None else None,
        content_type=blob.content_type,
        content_encoding=blob.content_encoding,
        crc32c=blob.crc32c,
        md5=blob.md5_hash,
        metadata=dict(blob.metadata or {}),
    )


class GcsBlobStore(BlobStore):
    def __init__(self, client: storage.Client):
        self._client = client

    def _blob(self, uri: str, generation: str | None = None) -> storage.Blob:
        bucket, name = parse_gs_uri(uri)
        return self._client.bucket(bucket).blob(name, generation=int(generation) if generation else None)

    def stat(self, uri: str) -> BlobInfo | None:
        bucket, name = parse_gs_uri(uri)
        try:
            blob = self._client.bucket(bucket).get_blob(name)
        except _TRANSIENT as exc:
            raise TransientError(f"Cloud Storage unavailable reading {uri}: {type(exc).__name__}") from exc
        return _info(blob) if blob is not None else None

    @contextmanager
    def open_read(self, uri: str, generation: str | None = None) -> Iterator[BinaryIO]:
        blob = self._blob(uri, generation)
        try:
            raw = blob.open("rb", chunk_size=CHUNK_SIZE, raw_download=True)
            with io.BufferedReader(raw, _READ_BUFFER) as reader:  # closes `raw` too
                yield reader
        except gexc.NotFound as exc:
            raise NotFound(f"{uri} (generation {generation or 'latest'}) does not exist") from exc
        except _TRANSIENT as exc:
            raise TransientError(f"Cloud Storage unavailable reading {uri}: {type(exc).__name__}") from exc

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        blob = self._blob(uri)
        try:
            with blob.open("wb", chunk_size=WRITE_CHUNK_SIZE, content_type=content_type, ignore_flush=True) as writer:
                yield writer
        except _TRANSIENT as exc:
            raise TransientError(f"Cloud Storage unavailable writing {uri}: {type(exc).__name__}") from exc

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        blob = self._blob(uri)
        try:
            blob.upload_from_string(data, content_type=content_type)
        except _TRANSIENT as exc:
            raise TransientError(f"Cloud Storage unavailable writing {uri}: {type(exc).__name__}") from exc
        return _info(blob)

    def list(self, prefix_uri: str) -> Iterator[BlobInfo]:
        bucket, prefix = parse_gs_uri(prefix_uri)
        for blob in self._client.list_blobs(bucket, prefix=prefix):
            yield _info(blob)

    def delete(self, uri: str) -> None:
        with suppress(gexc.NotFound):
            self._blob(uri).delete()
