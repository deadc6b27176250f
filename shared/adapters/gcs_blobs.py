"""The blob store over Cloud Storage (google-cloud-storage).

Reads return the stored bytes as they are (`raw_download`: no decompressive transcoding of gzip objects,
the readers sniff gzip themselves), downloaded in 8 MiB ranges behind an `io.BufferedReader`: the library's
reader has no `peek`, so iterating its lines would call `read(1)` once per byte. Writes stream through
resumable uploads in 32 MiB chunks (one request per chunk: a 1 GB output file takes 30 requests, not
120), so memory stays about one chunk per open writer; an upload interrupted by an exception is
cancelled, never committed. Every method maps Cloud Storage's errors in one place (`_mapped`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

import requests
from google.api_core import exceptions as gexc
from google.cloud import storage

from shared.domain.paths import parse_gs_uri
from shared.errors import NotFound, PermanentError, TransientError
from shared.ports import BlobInfo, BlobStore

__all__ = ["GcsBlobStore"]

CHUNK_SIZE = 8 * 1024 * 1024  # download range
WRITE_CHUNK_SIZE = 32 * 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require
_READ_BUFFER = 1024 * 1024  # served from the reader's downloaded chunk: a copy, not a request

_TRANSIENT = (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, gexc.GatewayTimeout,
              gexc.BadGateway, requests.RequestException, ConnectionError, TimeoutError)
_COMPOSE_MAX = 32  # sources per compose request


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Cloud Storage's errors, as the pipeline's: the one place they are mapped."""
    try:
        yield
    except (NotFound, PermanentError, TransientError):
        raise
    except gexc.NotFound as exc:
        raise NotFound(f"{what}: does not exist") from exc
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise TransientError(f"Cloud Storage refused access ({what}): {exc.message}") from exc
    except gexc.BadRequest as exc:
        raise PermanentError(f"Cloud Storage refused the request ({what}): {exc.message}") from exc
    except _TRANSIENT as exc:
        raise TransientError(f"Cloud Storage unavailable ({what}): {type(exc).__name__}") from exc
    except gexc.GoogleAPICallError as exc:
        raise TransientError(f"Cloud Storage error ({what}): {type(exc).__name__}") from exc


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
        updated=blob.updated,
    )


class GcsBlobStore(BlobStore):
    def __init__(self, client: storage.Client):
        self._client = client

    def _blob(self, uri: str, generation: str | None = None) -> storage.Blob:
        bucket, name = parse_gs_uri(uri)
        return self._client.bucket(bucket).blob(name, generation=int(generation) if generation else None)

    def stat(self, uri: str) -> BlobInfo | None:
        bucket, name = parse_gs_uri(uri)
        with _mapped(f"reading {uri}"):
            blob = self._client.bucket(bucket).get_blob(name)
        return _info(blob) if blob is not None else None

    @contextmanager
    def open_read(self, uri: str, generation: str | None = None, offset: int = 0) -> Iterator[BinaryIO]:
        blob = self._blob(uri, generation)
        with _mapped(f"reading {uri} (generation {generation or 'latest'})"):
            raw = blob.open("rb", chunk_size=CHUNK_SIZE, raw_download=True)
            if offset:
                raw.seek(offset)
            with io.BufferedReader(raw, _READ_BUFFER) as reader:  # closes `raw` too
                yield reader

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        blob = self._blob(uri)
        with _mapped(f"writing {uri}"), blob.open("wb", chunk_size=WRITE_CHUNK_SIZE, content_type=content_type,
                                                  ignore_flush=True) as writer:
            yield writer

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        blob = self._blob(uri)
        with _mapped(f"writing {uri}"):
            blob.upload_from_string(data, content_type=content_type)
        return _info(blob)

    def list(self, prefix_uri: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[BlobInfo]:
        bucket, prefix = parse_gs_uri(prefix_uri)
        with _mapped(f"listing {prefix_uri}"):
            # start_offset is inclusive: a name's successor in byte order starts just after it.
            blobs = self._client.list_blobs(bucket, prefix=prefix, max_results=limit,
                                            start_offset=start_after + "\x00" if start_after else None)
            for blob in blobs:
                yield _info(blob)

    def delete(self, uri: str) -> None:
        with _mapped(f"deleting {uri}"), suppress(gexc.NotFound):
            self._blob(uri).delete()

    def compose(self, sources: list[str], dest: str, content_type: str) -> BlobInfo:
        """Composes in rounds of 32 sources (the service's limit); intermediate objects are named after
        `dest` and deleted."""
        parts = list(sources)
        round_no = 0
        while len(parts) > _COMPOSE_MAX:
            merged = []
            for start in range(0, len(parts), _COMPOSE_MAX):
                target = f"{dest}.compose-{round_no}-{start // _COMPOSE_MAX}"
                self._compose(parts[start:start + _COMPOSE_MAX], target, content_type)
                merged.append(target)
            if round_no:
                for uri in parts:
                    self.delete(uri)
            parts, round_no = merged, round_no + 1
        info = self._compose(parts, dest, content_type)
        if round_no:
            for uri in parts:
                self.delete(uri)
        return info

    def _compose(self, sources: list[str], dest: str, content_type: str) -> BlobInfo:
        blob = self._blob(dest)
        blob.content_type = content_type
        with _mapped(f"composing {dest}"):
            blob.compose([self._blob(uri) for uri in sources])
        return _info(blob)
