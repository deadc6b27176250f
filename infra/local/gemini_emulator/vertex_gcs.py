"""The little of Cloud Storage's JSON API the Vertex surface needs, over plain HTTP to fake-gcs-server.

The emulator reads batch inputs and writes batch outputs where Vertex AI would: in Cloud Storage. Locally
that is fake-gcs-server (`GEMINI_EMULATOR_STORAGE_HOST`, else `STORAGE_EMULATOR_HOST`, e.g.
`http://127.0.0.1:4443`). Plain HTTP keeps the emulator free of Google's client libraries. Every failure is
an `ApiError` whose message names the object; nothing here is retried (the job fails, as a real one whose
input is unreadable does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from .wire import ApiError

__all__ = ["Storage", "split_gs_uri"]


def split_gs_uri(uri: str, where: str) -> tuple[str, str]:
    """`gs://bucket/name` -> (bucket, name); a 400 naming `where` otherwise."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise ApiError(400, f"{where} must be a Cloud Storage URI gs://bucket/object, got {uri!r}.")
    bucket, _, name = uri[5:].partition("/")
    if not bucket:
        raise ApiError(400, f"{where} names no bucket: {uri!r}.")
    return bucket, name


class Storage:
    def __init__(self, host: str | None, timeout: float = 60.0) -> None:
        self.host = host.rstrip("/") if host else None
        self._timeout = timeout

    @property
    def configured(self) -> bool:
        return self.host is not None

    def require(self) -> None:
        """Raise the clear FAILED_PRECONDITION when no Cloud Storage is configured."""
        if self.host is None:
            raise ApiError(400, "The emulator has no Cloud Storage: set GEMINI_EMULATOR_STORAGE_HOST or "
                                "STORAGE_EMULATOR_HOST to fake-gcs-server's URL.", status="FAILED_PRECONDITION")

    def _client(self) -> httpx.Client:
        self.require()
        return httpx.Client(base_url=self.host, timeout=self._timeout, trust_env=False)

    def size(self, uri: str) -> int | None:
        """The object's size, or None when it does not exist."""
        bucket, name = split_gs_uri(uri, "gcsSource.uris")
        with self._client() as client:
            response = self._checked(client.get(f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}"), uri, missing_ok=True)
        return None if response is None else int(response.json().get("size") or 0)

    def lines(self, uri: str) -> Iterator[bytes]:
        """The object's lines, streamed."""
        bucket, name = split_gs_uri(uri, "gcsSource.uris")
        with self._client() as client, client.stream(
                "GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}", params={"alt": "media"}) as response:
            if response.status_code >= 400:
                response.read()
                self._checked(response, uri)
            rest = b""
            for chunk in response.iter_bytes():
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                yield from parts
            if rest:
                yield rest

    def upload(self, uri: str, source: Path, content_type: str = "application/jsonl") -> None:
        bucket, name = split_gs_uri(uri, "outputUriPrefix")
        with self._client() as client, source.open("rb") as body:
            self._checked(client.post(f"/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": name},
                                      content=body, headers={"Content-Type": content_type}), uri)

    @staticmethod
    def _checked(response: httpx.Response, uri: str, missing_ok: bool = False) -> httpx.Response | None:
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code == 404:
            raise ApiError(400, f"Cloud Storage object or bucket {uri} does not exist.", status="NOT_FOUND")
        if response.status_code >= 400:
            raise ApiError(400, f"Cloud Storage answered {response.status_code} for {uri}.", status="FAILED_PRECONDITION")
        return response
