"""GeminiClient: the Gemini API's Batch Mode for embeddings, its Files API and interactive embeddings.

Guarantees:
- The API key travels in the `x-goog-api-key` header, to the configured base URL only: never as a query
  parameter, never to an upload session URL (that URL is its own credential). No error, repr or log line
  of this module contains it.
- Every failure is a `GeminiError` (`shared.gemini.errors`); what is retried is decided per call
  (`shared.gemini.retry`): creating a batch is not idempotent and is retried only when it provably
  made nothing.
- Batch results are mapped by key, never by position; a responses file is streamed line by line.
- One client holds one `httpx.Client`: create it once, reuse it, close it (or use `with`).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, BinaryIO

import httpx
import orjson
from pydantic import ValidationError

from shared.gemini.errors import (
    AwaitTimeoutError,
    BatchNotCompleteError,
    GeminiError,
    GeminiNotFoundError,
    InvalidArgumentError,
    PermanentGeminiError,
    RetryableGeminiError,
    redact,
)
from shared.gemini.models import (
    DEFAULT_MODEL,
    MAX_DIMENSIONS,
    MIN_DIMENSIONS,
    BatchItemResult,
    BatchPage,
    BatchState,
    EmbedContentRequest,
    EmbeddingBatch,
    File,
    ResultFormatError,
    TaskType,
    model_resource,
    parse_result,
)
from shared.gemini.polling import poll_interval_for, timeout_for
from shared.gemini.retry import (
    RETRYABLE_STATUS_CODES,
    RetryPolicy,
    is_retryable,
    may_retry_create,
    may_retry_create_unsent,
    parse_duration,
    parse_retry_after,
    retry_call,
)
from shared.logging import get_logger, register_secret

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "INLINE_LIMIT_BYTES",
    "MAX_INTERACTIVE_REQUESTS",
    "UPLOAD_CHUNK_SIZE",
    "EmbedItem",
    "GeminiClient",
]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
#: The API takes inline requests up to 20 MB for the whole create call; stay clear of the edge.
INLINE_LIMIT_BYTES = 19_000_000
#: batchEmbedContents takes at most this many requests per call.
MAX_INTERACTIVE_REQUESTS = 100
UPLOAD_CHUNK_SIZE = 8 * 1024 * 1024
DEFAULT_PAGE_SIZE = 50
JSONL_MIME_TYPE = "application/jsonl"

_JSON_HEADERS = {"Content-Type": "application/json"}
_REQUEST_ID_HEADERS = ("x-request-id", "x-goog-request-id")
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_STATUS_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EmbedItem:
    """A text to embed under a key of the caller's choosing (results are mapped back by key)."""

    key: str
    text: str
    title: str | None = None


class GeminiClient:
    """A typed client of the Gemini API's embedding batches, files and interactive embeddings.

    `transport` is httpx's seam for tests (`httpx.MockTransport`); `sleep` and `clock` are used for every
    wait, so tests never really sleep. `inline_limit_bytes` is where `submit_embedding_batch` switches
    from inline requests to an uploaded file.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        inline_limit_bytes: int = INLINE_LIMIT_BYTES,
        rand: Callable[[], float] = random.random,
    ):
        self._api_key = api_key or ""
        register_secret(self._api_key)
        self.base_url = base_url.rstrip("/")
        self.inline_limit_bytes = inline_limit_bytes
        self._policy = RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._http = httpx.Client(
            base_url=self.base_url + "/", timeout=timeout, transport=transport, follow_redirects=False
        )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> GeminiClient:
        """A client configured by the pipeline's settings object (`GEMINI_API_BASE_URL` picks Google or the
        emulator; nothing else differs)."""
        options: dict[str, Any] = {
            "base_url": settings.gemini_api_base_url,
            "timeout": settings.gemini_timeout_seconds,
            "max_retries": settings.gemini_max_retries,
        }
        options.update(overrides)
        return cls(settings.gemini_api_key.get_secret_value(), **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GeminiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeminiClient(base_url={self.base_url!r})"

    # -- batches --------------------------------------------------------------------------------

    def submit_embedding_batch(
        self,
        items: Iterable[str | EmbedItem],
        *,
        display_name: str,
        model: str = DEFAULT_MODEL,
        task_type: str | TaskType | None = None,
        output_dimensionality: int | None = None,
        title: str | None = None,
        priority: int = 0,
    ) -> EmbeddingBatch:
        """Create an embedding batch from texts (keyed "0", "1", ... by position) or `EmbedItem`s.

        Sends the requests inline while the create call stays under `inline_limit_bytes`; otherwise
        writes them to a JSONL file, uploads it and creates the batch from the file. Validates every
        option first (`InvalidArgumentError`). Not idempotent: see `create_embedding_batch`.
        """
        display_name = _check_display_name(display_name)
        model_path, request = _request_builder(model, task_type, output_dimensionality, title)
        requests = [{"key": entry.key, "request": request(entry.text, entry.title)} for entry in _as_items(items)]
        inline = [_inline_wire(request) for request in requests]
        if _fits(inline, display_name, priority, self.inline_limit_bytes):
            body = _create_body(display_name, {"requests": {"requests": inline}}, priority)
            return self._post_create(model_path, body)
        del inline
        uploaded = self._upload_requests(requests, display_name)
        return self._post_create(
            model_path, _create_body(display_name, {"fileName": uploaded.name}, priority)
        )

    def create_embedding_batch(
        self,
        *,
        model: str,
        display_name: str,
        priority: int = 0,
        inline_requests: list[dict[str, Any]] | None = None,
        file_name: str | None = None,
        retry_quota: bool = True,
    ) -> EmbeddingBatch:
        """Create a batch from `{"key", "request"}` dicts or from an uploaded JSONL file.

        Not idempotent: the same call twice makes two batches. Retried only on HTTP 429 (unless
        `retry_quota` is False: the caller waits for capacity its own way) and on connection failures
        before sending; any other failure raises, and the caller recovers the batch by its display name
        if the call may have reached the server.
        """
        display_name = _check_display_name(display_name)
        if (inline_requests is None) == (file_name is None):
            raise InvalidArgumentError("give exactly one of inline_requests and file_name")
        if inline_requests is not None:
            input_config: dict[str, Any] = {
                "requests": {"requests": [_inline_wire(r) for r in inline_requests]}
            }
        else:
            input_config = {"fileName": _resource_name("files", file_name or "")}
        return self._post_create(_model_path(model), _create_body(display_name, input_config, priority),
                                 retry_if=may_retry_create if retry_quota else may_retry_create_unsent)

    def get_batch(self, name: str) -> EmbeddingBatch:
        return self._batch_from(self._request("GET", f"{API_VERSION}/{_resource_name('batches', name)}"))

    def list_batches(self, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None) -> BatchPage:
        """One page of batches, as the API orders them (newest first). Outputs are not parsed: ask
        `get_batch` or `iter_results` for them."""
        params: dict[str, Any] = {"pageSize": page_size}
        if page_token:
            params["pageToken"] = page_token
        body = _json(self._request("GET", f"{API_VERSION}/batches", params=params))
        operations = body.get("operations", body.get("batches")) or []
        try:
            batches = [EmbeddingBatch.from_operation(op, with_output=False) for op in operations]
        except ValidationError as exc:
            raise PermanentGeminiError(f"unexpected batch listing: {exc.errors()[0]['msg']}") from None
        return BatchPage(batches, body.get("nextPageToken") or None)

    def iter_batches(self, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[EmbeddingBatch]:
        """Every batch, page after page."""
        token: str | None = None
        while True:
            page = self.list_batches(page_size, token)
            yield from page.batches
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel_batch(self, name: str) -> None:
        """Ask the API to stop the batch (best effort: it may still finish)."""
        path = f"{API_VERSION}/{_resource_name('batches', name)}:cancel"
        self._request("POST", path, content=b"{}", headers=_JSON_HEADERS)

    def delete_batch(self, name: str) -> None:
        """Delete the batch's record (it does not cancel a running batch)."""
        self._request("DELETE", f"{API_VERSION}/{_resource_name('batches', name)}")

    def await_completion(
        self,
        name: str,
        *,
        poll_interval: float | None = None,
        timeout: float | None = None,
        on_progress: Callable[[EmbeddingBatch], None] | None = None,
    ) -> EmbeddingBatch:
        """Poll until the batch reaches a terminal state and return it (whatever that state is).

        Defaults follow the batch's size (`shared.gemini.polling`), re-read while the size is still
        unknown. `on_progress(batch)` runs after every poll. Raises `AwaitTimeoutError` after `timeout`
        seconds; the batch itself runs on.
        """
        started = self._clock()
        batch = self.get_batch(name)
        while True:
            if on_progress is not None:
                on_progress(batch)
            if batch.is_terminal:
                return batch
            interval = poll_interval if poll_interval is not None else poll_interval_for(batch.request_count)
            limit = timeout if timeout is not None else timeout_for(batch.request_count)
            waited = self._clock() - started
            if waited >= limit:
                raise AwaitTimeoutError(batch, waited)
            self._sleep(max(0.0, min(interval, limit - waited)))
            batch = self.get_batch(batch.name or name)

    def iter_results(self, batch_or_name: EmbeddingBatch | str, *, start: int = 0) -> Iterator[BatchItemResult]:
        """Every item result of a SUCCEEDED batch, in the API's order (map them by key), from the `start`-th
        on (the lines of a responses file before it are read but not parsed).

        Raises `BatchNotCompleteError` at once for a batch in any other state. A responses file is
        streamed: memory holds one line at a time. A broken download raises `RetryableGeminiError`
        midway; iterate again to start over.
        """
        batch = batch_or_name if isinstance(batch_or_name, EmbeddingBatch) else self.get_batch(batch_or_name)
        if batch.state is not BatchState.SUCCEEDED:
            raise BatchNotCompleteError(batch)
        if batch.inlined_responses is None and batch.responses_file is None:
            batch = self.get_batch(batch.name)  # a listed batch carries no output
        if batch.inlined_responses is not None:
            return iter(batch.inlined_responses[start:])
        if batch.responses_file:
            return self._iter_results_file(batch.responses_file, start)
        raise PermanentGeminiError(f"{batch.name} succeeded but carries no output")

    def get_embeddings(self, batch_or_name: EmbeddingBatch | str) -> dict[str, list[float]]:
        """The vectors of a SUCCEEDED batch's successful items, by key."""
        return {r.key: r.values for r in self.iter_results(batch_or_name) if r.ok and r.values is not None}

    def failed_items(self, batch_or_name: EmbeddingBatch | str) -> list[BatchItemResult]:
        """The failed items of a SUCCEEDED batch, with their keys and errors, to resubmit."""
        return [r for r in self.iter_results(batch_or_name) if not r.ok]

    # -- files ------------------------------------------------------------------------------------

    def upload_file(
        self,
        source: bytes | BinaryIO | IO[bytes] | Iterable[bytes],
        *,
        size: int,
        display_name: str,
        mime_type: str = JSONL_MIME_TYPE,
        chunk_size: int = UPLOAD_CHUNK_SIZE,
    ) -> File:
        """Upload exactly `size` bytes through the resumable protocol; memory holds one chunk.

        `chunk_size` is rounded down to the granularity the server announces. The session is started
        with retries; a chunk is not retried (a resent chunk could be stored twice), so a failure midway
        raises and the caller uploads again from the start.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgumentError(f"size must be a non-negative integer, not {size!r}")
        if chunk_size <= 0:
            raise InvalidArgumentError(f"chunk_size must be positive, not {chunk_size!r}")
        display_name = _check_display_name(display_name)
        start = self._request(
            "POST",
            f"upload/{API_VERSION}/files",
            content=_dumps({"file": {"displayName": display_name}}),
            headers={
                **_JSON_HEADERS,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
                "X-Goog-Upload-Header-Content-Type": mime_type,
            },
        )
        session = start.headers.get("x-goog-upload-url")
        if not session:
            raise PermanentGeminiError(
                "upload start answered without X-Goog-Upload-URL", operation="POST upload"
            )
        session_url = self._session_url(session)
        granularity = _int_or_zero(start.headers.get("x-goog-upload-chunk-granularity"))
        if granularity > 0:
            chunk_size = max(granularity, chunk_size - chunk_size % granularity)

        offset = 0
        final: httpx.Response | None = None
        chunks = _chunks(source, chunk_size)
        for chunk in chunks:
            last = offset + len(chunk) == size
            # Checked before finalizing: a finalized upload cannot take the rest back.
            if offset + len(chunk) > size or (last and next(chunks, None)):
                raise InvalidArgumentError(f"source is longer than size={size}")
            final = self._upload_chunk(session_url, chunk, offset, last)
            offset += len(chunk)
            if last:
                break
        if size == 0:
            final = self._upload_chunk(session_url, b"", 0, True)
        if final is None or offset != size:
            raise InvalidArgumentError(f"source ended after {offset} of size={size} bytes")
        body = _json(final)
        try:
            return File.model_validate(body.get("file", body))
        except ValidationError:
            raise PermanentGeminiError(
                "upload finished without a file resource", operation="POST upload"
            ) from None

    def get_file(self, name: str) -> File:
        body = _json(self._request("GET", f"{API_VERSION}/{_resource_name('files', name)}"))
        try:
            return File.model_validate(body)
        except ValidationError:
            raise PermanentGeminiError(f"unexpected file resource for {name}") from None

    def download_file(self, name: str) -> Iterator[bytes]:
        """The file's bytes, streamed in pieces."""
        path = f"download/{API_VERSION}/{_resource_name('files', name)}:download"
        response = self._request("GET", path, params={"alt": "media"}, stream=True)
        try:
            yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, f"GET {path}") from None
        finally:
            response.close()

    def delete_file(self, name: str) -> None:
        self._request("DELETE", f"{API_VERSION}/{_resource_name('files', name)}")

    # -- interactive ------------------------------------------------------------------------------

    def embed_content(
        self,
        text: str,
        *,
        model: str = DEFAULT_MODEL,
        task_type: str | TaskType | None = None,
        output_dimensionality: int | None = None,
        title: str | None = None,
    ) -> list[float]:
        """One text's vector, at once (interactive price)."""
        model_path, request = _request_builder(model, task_type, output_dimensionality, title)
        body = _json(
            self._request(
                "POST",
                f"{API_VERSION}/{model_path}:embedContent",
                content=_dumps(request(text)),
                headers=_JSON_HEADERS,
            )
        )
        values = (body.get("embedding") or {}).get("values")
        if not isinstance(values, list):
            raise PermanentGeminiError("embedContent answered without embedding.values")
        return [float(v) for v in values]

    def batch_embed_contents(
        self,
        texts: Iterable[str],
        *,
        model: str = DEFAULT_MODEL,
        task_type: str | TaskType | None = None,
        output_dimensionality: int | None = None,
        title: str | None = None,
    ) -> list[list[float]]:
        """The texts' vectors in input order, in calls of at most 100 requests (interactive price)."""
        model_path, request = _request_builder(model, task_type, output_dimensionality, title)
        texts = list(texts)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_INTERACTIVE_REQUESTS):
            group = texts[start : start + MAX_INTERACTIVE_REQUESTS]
            requests = [request(text) for text in group]
            path = f"{API_VERSION}/{model_path}:batchEmbedContents"
            body = _json(
                self._request("POST", path, content=_dumps({"requests": requests}), headers=_JSON_HEADERS)
            )
            embeddings = body.get("embeddings")
            if not isinstance(embeddings, list) or len(embeddings) != len(group):
                raise PermanentGeminiError(
                    f"batchEmbedContents answered {len(embeddings or [])} embeddings for {len(group)} texts"
                )
            vectors.extend([float(v) for v in (e or {}).get("values") or []] for e in embeddings)
        return vectors

    # -- plumbing -----------------------------------------------------------------------------------

    def _post_create(self, model_path: str, body: dict[str, Any],
                     retry_if: Callable[[GeminiError], bool] = may_retry_create) -> EmbeddingBatch:
        path = f"{API_VERSION}/{model_path}:asyncBatchEmbedContent"
        response = self._request("POST", path, content=_dumps(body), headers=_JSON_HEADERS, retry_if=retry_if)
        return self._batch_from(response)

    def _upload_requests(self, requests: list[dict[str, Any]], display_name: str) -> File:
        # A temporary file on disk rather than a second copy of every request in memory.
        with tempfile.TemporaryFile() as spool:
            for request in requests:
                spool.write(_dumps(request))
                spool.write(b"\n")
            size = spool.tell()
            spool.seek(0)
            return self.upload_file(spool, size=size, display_name=display_name)

    def _upload_chunk(self, session_url: httpx.URL, chunk: bytes, offset: int, last: bool) -> httpx.Response:
        command = "upload, finalize" if last else "upload"
        response = self._send(
            "POST",
            session_url,
            "POST upload session",
            authenticate=False,  # the session URL is the credential
            content=chunk,
            headers={"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)},
        )
        status = response.headers.get("x-goog-upload-status")
        expected = "final" if last else "active"
        if status is not None and status != expected:
            raise PermanentGeminiError(
                f"upload session is {status!r}, expected {expected!r}", operation="POST upload session"
            )
        return response

    def _session_url(self, url: str) -> httpx.URL:
        # Uploads go to the configured host even if a proxy or an emulator names another one (as the
        # official SDK does): the key's host is the only one this client talks to.
        base = self._http.base_url
        session = httpx.URL(url)
        if not session.is_absolute_url:
            return base.join(url)
        return session.copy_with(scheme=base.scheme, host=base.host, port=base.port)

    def _iter_results_file(self, file_name: str, start: int = 0) -> Iterator[BatchItemResult]:
        skipped = 0
        with closing(self.download_file(file_name)) as chunks:
            for number, line in enumerate(_byte_lines(chunks), start=1):
                if not line.strip():
                    continue
                if skipped < start:
                    skipped += 1
                    continue
                try:
                    result = parse_result(orjson.loads(line), number - 1)
                except (ValueError, ResultFormatError) as exc:
                    raise PermanentGeminiError(f"line {number} of {file_name}: {exc}") from None
                yield result

    def _batch_from(self, response: httpx.Response) -> EmbeddingBatch:
        try:
            return EmbeddingBatch.from_operation(_json(response))
        except ResultFormatError as exc:
            raise PermanentGeminiError(f"unreadable batch output: {exc}") from None
        except ValidationError as exc:
            raise PermanentGeminiError(f"unexpected batch resource: {exc.errors()[0]['msg']}") from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry_if: Callable[[GeminiError], bool] = is_retryable,
        **kwargs: Any,
    ) -> httpx.Response:
        operation = f"{method} {path}"
        return retry_call(
            partial(self._send, method, path, operation, **kwargs),
            policy=self._policy,
            sleep=self._sleep,
            rand=self._rand,
            retry_if=retry_if,
            on_retry=partial(_log_retry, operation),
        )

    def _send(
        self,
        method: str,
        url: str | httpx.URL,
        operation: str,
        *,
        authenticate: bool = True,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One attempt. `stream`: the body is left unread (the caller closes the response)."""
        request = self._http.build_request(method, url, headers=self._headers(headers, authenticate), **kwargs)
        try:
            response = self._http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, operation) from None
        if response.is_error:
            if stream:  # the error body, for the message; the connection goes back to the pool
                try:
                    response.read()
                except httpx.HTTPError:
                    pass
                finally:
                    response.close()
            raise self._http_error(response, operation)
        return response

    def _headers(self, headers: Mapping[str, str] | None, authenticate: bool) -> dict[str, str]:
        merged = dict(headers or {})
        if authenticate and self._api_key:
            merged["x-goog-api-key"] = self._api_key
        return merged

    def _transport_error(self, exc: httpx.HTTPError, operation: str) -> GeminiError:
        text = redact(f"{type(exc).__name__}: {exc}", self._api_key)
        if isinstance(exc, _TRANSIENT):
            timed_out = isinstance(exc, httpx.TimeoutException)
            return RetryableGeminiError(
                f"{'timed out' if timed_out else 'connection failed'} ({text})",
                status="DEADLINE_EXCEEDED" if timed_out else "UNAVAILABLE",
                operation=operation,
                reached_server=False if isinstance(exc, _NOT_SENT) else None,
            )
        return PermanentGeminiError(f"request failed ({text})", operation=operation, reached_server=None)

    def _http_error(self, response: httpx.Response, operation: str) -> GeminiError:
        code = response.status_code
        error: dict[str, Any] = {}
        try:
            parsed = response.json()
            if isinstance(parsed, list) and parsed:  # some Google front ends wrap the body in a list
                parsed = parsed[0]
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except ValueError:
            pass
        message = str(
            error.get("message") or response.text[:300].strip() or response.reason_phrase or f"HTTP {code}"
        )
        details = error.get("details") if isinstance(error.get("details"), list) else []
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            retry_after = _retry_delay(details)
        request_id = next((response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None)
        if code in RETRYABLE_STATUS_CODES:
            kind: type[GeminiError] = RetryableGeminiError
        elif code == 404:
            kind = GeminiNotFoundError
        else:
            kind = PermanentGeminiError
        return kind(
            redact(message, self._api_key),
            status_code=code,
            status=error.get("status") or _STATUS_BY_HTTP.get(code),
            request_id=request_id,
            retry_after=retry_after,
            details=details,
            operation=operation,
            reached_server=True,
        )


# -- helpers ------------------------------------------------------------------------------------------


def _log_retry(operation: str, error: GeminiError, retry: int, wait: float) -> None:
    _log.warning(
        "Gemini API call failed; retrying",
        operation=operation,
        status_code=error.status_code,
        status=error.status,
        retry=retry + 1,
        wait_seconds=round(wait, 3),
    )


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # compact UTF-8, as the size check assumes; fast on big batches


def _json(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = orjson.loads(response.content)  # inline outputs can be megabytes of floats
    except ValueError:
        raise PermanentGeminiError(f"answer is not JSON (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise PermanentGeminiError(f"answer is not a JSON object (HTTP {response.status_code})")
    return body


def _create_body(display_name: str, input_config: dict[str, Any], priority: int) -> dict[str, Any]:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgumentError(f"priority must be an integer, not {priority!r}")
    # int64 travels as a string in Google's JSON.
    return {"batch": {"displayName": display_name, "inputConfig": input_config, "priority": str(priority)}}


def _fits(inline: list[dict[str, Any]], display_name: str, priority: int, limit: int) -> bool:
    """Whether the inline create body stays within `limit` bytes, stopping as soon as it does not."""
    size = (
        len(_dumps(_create_body(display_name, {"requests": {"requests": []}}, priority))) - 1
    )  # less a comma
    for request in inline:
        size += len(_dumps(request)) + 1  # and its comma
        if size > limit:
            return False
    return True


def _inline_wire(request: Mapping[str, Any]) -> dict[str, Any]:
    """`{"key", "request"}` -> the API's `{"request", "metadata": {"key"}}` (wire-form dicts pass)."""
    if "key" not in request:
        if (
            "request" in request
            and isinstance(request.get("metadata"), Mapping)
            and "key" in request["metadata"]
        ):
            return dict(request)
        raise InvalidArgumentError("every inline request needs a key: {'key': ..., 'request': {...}}")
    if not isinstance(request.get("request"), Mapping):
        raise InvalidArgumentError(f"inline request {request['key']!r} has no 'request' object")
    metadata = {**(request.get("metadata") or {}), "key": str(request["key"])}
    return {"request": request["request"], "metadata": metadata}


def _as_items(items: Iterable[str | EmbedItem]) -> list[EmbedItem]:
    if isinstance(items, str | bytes):
        raise InvalidArgumentError("items must be a list of texts, not one string")
    entries: list[EmbedItem] = []
    seen: set[str] = set()
    for position, item in enumerate(items):
        if isinstance(item, str):
            item = EmbedItem(str(position), item)
        elif not isinstance(item, EmbedItem):
            raise InvalidArgumentError(
                f"item #{position} must be a str or an EmbedItem, not {type(item).__name__}"
            )
        if item.key in seen:
            raise InvalidArgumentError(f"duplicate key {item.key!r}: keys map results back to items")
        seen.add(item.key)
        entries.append(item)
    if not entries:
        raise InvalidArgumentError("items is empty: give at least one text")
    return entries


def _check_display_name(display_name: Any) -> str:
    if not isinstance(display_name, str) or not display_name.strip():
        raise InvalidArgumentError(
            "display_name is required: give the batch a descriptive name, e.g. 'Product catalog index 2025-11-25'"
        )
    return display_name


def _check_options(
    task_type: str | TaskType | None, output_dimensionality: int | None, title: str | None
) -> TaskType | None:
    task = None
    if task_type is not None:
        try:
            task = TaskType.parse(task_type)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
    if output_dimensionality is not None and (
        isinstance(output_dimensionality, bool)
        or not isinstance(output_dimensionality, int)
        or not MIN_DIMENSIONS <= output_dimensionality <= MAX_DIMENSIONS
    ):
        raise InvalidArgumentError(
            f"output_dimensionality must be an integer from {MIN_DIMENSIONS} to {MAX_DIMENSIONS} "
            f"(768, 1536 or 3072 recommended), not {output_dimensionality!r}"
        )
    _check_title(task, title)
    return task


def _check_title(task: TaskType | None, title: str | None) -> None:
    if title and task is not TaskType.RETRIEVAL_DOCUMENT:
        raise InvalidArgumentError("title is only allowed with task_type RETRIEVAL_DOCUMENT")


def _request_builder(
    model: str, task_type: str | TaskType | None, output_dimensionality: int | None, title: str | None
) -> tuple[str, Callable[..., dict[str, Any]]]:
    """Check the options once; returns the model path and a builder of one request's wire form
    (`request(text, title=None)`: an item's own title wins over the batch's)."""
    task = _check_options(task_type, output_dimensionality, title)
    model_path = _model_path(model)

    def request(text: str, item_title: str | None = None) -> dict[str, Any]:
        _check_title(task, item_title)
        return EmbedContentRequest.of_text(
            text, model=model_path, task_type=task, title=item_title or title,
            output_dimensionality=output_dimensionality,
        ).to_wire()

    return model_path, request


def _model_path(model: str) -> str:
    if not isinstance(model, str) or not model.strip("/ "):
        raise InvalidArgumentError(f"model must name a model such as {DEFAULT_MODEL!r}, not {model!r}")
    model = model.strip("/ ")
    return model_resource(model)


def _resource_name(collection: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip("/ "):
        raise InvalidArgumentError(
            f"a {collection} name such as '{collection}/abc' is required, not {name!r}"
        )
    name = name.strip("/ ")
    return name if name.startswith(f"{collection}/") else f"{collection}/{name}"


def _retry_delay(details: list[Any]) -> float | None:
    """The `retryDelay` of a google.rpc.RetryInfo detail (how the API says "come back in 37s")."""
    for detail in details:
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            return parse_duration(detail.get("retryDelay"))
    return None


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _chunks(source: bytes | BinaryIO | IO[bytes] | Iterable[bytes], size: int) -> Iterator[bytes]:
    """`source` cut into pieces of exactly `size` bytes (the last may be shorter)."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    read = getattr(source, "read", None)
    pieces: Iterable[bytes] = iter(partial(read, size), b"") if callable(read) else source  # type: ignore[arg-type]
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _byte_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, split at b"\n" (a "\r" before it is JSON whitespace). orjson parses
    bytes, so the text is never decoded: `iter_lines` decoding and splitting cost about as much again."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
