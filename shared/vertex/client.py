"""VertexClient: Vertex AI's batchPredictionJobs and interactive embeddings, over httpx and a bearer token.

Guarantees:
- Every failure is a `VertexError` (`shared.vertex.errors`). Reads, cancel and delete are retried (bounded,
  full-jitter backoff, honouring Retry-After); creating a job is NOT idempotent and is sent once, retried
  only when the connection provably failed before anything was sent. A 401 refreshes the token and tries
  once more (the server processed nothing).
- Requests go to Google's endpoint of each location (`endpoint_for`: regional, `global`, or the `us`/`eu`
  multi-regions), or all to one `base_url` (an emulator). Job names carry their location.
- Tokens travel in the Authorization header only and never appear in an error or a log line.
- One client holds one `httpx.Client`: create it once, reuse it, close it (or use `with`).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from shared.logging import get_logger
from shared.vertex.auth import TokenSource
from shared.vertex.errors import (
    InvalidArgumentError,
    PermanentVertexError,
    RetryableVertexError,
    VertexAuthError,
    VertexError,
    VertexNotFoundError,
)

__all__ = [
    "API_VERSION",
    "MULTI_REGIONS",
    "BatchJob",
    "CompletionStats",
    "JobStatus",
    "VertexClient",
    "endpoint_for",
    "location_of",
]

API_VERSION = "v1"
MULTI_REGIONS = frozenset({"us", "eu"})
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_JOB_NAME = re.compile(r"^projects/[^/]+/locations/(?P<location>[^/]+)/batchPredictionJobs/[^/:]+$")
_LOCATION = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_STATUS_BY_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                   409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                   504: "DEADLINE_EXCEEDED"}
_log = get_logger(__name__)


def endpoint_for(location: str) -> str:
    """Google's endpoint of a location: `global` -> aiplatform.googleapis.com, the `us`/`eu` multi-regions ->
    aiplatform.{us,eu}.rep.googleapis.com, a region -> {region}-aiplatform.googleapis.com."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in MULTI_REGIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def location_of(job_name: str) -> str:
    match = _JOB_NAME.match(job_name or "")
    if match is None:
        raise InvalidArgumentError(
            f"not a batch prediction job name: {job_name!r} (expected projects/P/locations/L/batchPredictionJobs/ID)")
    return match["location"]


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A google.rpc.Status as a job carries it."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class CompletionStats:
    successful: int = 0
    failed: int = 0
    incomplete: int = -1  # -1: unknown (the API's own convention)


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A BatchPredictionJob, as far as this client reads it (the API's JSON stays in `raw`)."""

    name: str
    state: str  # JOB_STATE_*
    display_name: str = ""
    model: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    end_time: datetime | None = None
    error: JobStatus | None = None
    stats: CompletionStats | None = None
    output_directory: str | None = None  # outputInfo.gcsOutputDirectory: where this job's results are
    output_uri_prefix: str | None = None  # outputConfig.gcsDestination.outputUriPrefix: what we asked for
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BatchJob:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise PermanentVertexError("a batch prediction job without a name in the answer")
        error = body.get("error") if isinstance(body.get("error"), dict) else None
        stats = body.get("completionStats") if isinstance(body.get("completionStats"), dict) else None
        output = ((body.get("outputConfig") or {}).get("gcsDestination") or {}).get("outputUriPrefix")
        return cls(
            name=body["name"],
            state=str(body.get("state") or "JOB_STATE_UNSPECIFIED"),
            display_name=str(body.get("displayName") or ""),
            model=str(body.get("model") or ""),
            labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
            create_time=_timestamp(body.get("createTime")),
            end_time=_timestamp(body.get("endTime")),
            error=JobStatus(int(error.get("code") or 0), str(error.get("message") or "")) if error else None,
            stats=CompletionStats(_int(stats.get("successfulCount")), _int(stats.get("failedCount")),
                                  _int(stats.get("incompleteCount"), -1)) if stats else None,
            output_directory=(body.get("outputInfo") or {}).get("gcsOutputDirectory") or None,
            output_uri_prefix=output or None,
            raw=body,
        )


class VertexClient:
    """A client of one project's Vertex AI batch prediction jobs and interactive embeddings.

    `base_url` None: Google's endpoint of each location; set: every request goes there (an emulator).
    `transport` is httpx's seam for tests (`httpx.MockTransport`); `sleep` and `rand` make waits testable.
    """

    def __init__(self, project: str, *, tokens: TokenSource, base_url: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random):
        if not project or "/" in project:
            raise InvalidArgumentError(f"a Google Cloud project id is required, not {project!r}")
        self.project = project
        self.base_url = base_url.rstrip("/") if base_url else None
        self.max_retries = max_retries
        self._tokens = tokens
        self._sleep = sleep
        self._rand = rand
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VertexClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VertexClient(project={self.project!r}, base_url={self.base_url!r})"

    # -- batch prediction jobs ------------------------------------------------------------------

    def parent(self, location: str) -> str:
        if not _LOCATION.match(location or ""):
            raise InvalidArgumentError(f"not a Vertex AI location: {location!r} (e.g. us-central1, global, eu)")
        return f"projects/{self.project}/locations/{location}"

    def create_batch_job(self, location: str, body: dict[str, Any]) -> BatchJob:
        """Create a job. Not idempotent: sent once (see the module docstring); a failure that may have
        reached the server is raised, and the caller finds the job again by its labels."""
        path = f"{self.parent(location)}/batchPredictionJobs"
        answer = self._call("POST", location, path, json_body=body, idempotent=False)
        return BatchJob.from_json(answer)

    def get_batch_job(self, name: str) -> BatchJob:
        return BatchJob.from_json(self._call("GET", location_of(name), name))

    def list_batch_jobs(self, location: str, *, filter: str | None = None, page_size: int = 100,
                        page_token: str | None = None) -> tuple[list[BatchJob], str | None]:
        """One page of jobs (order not documented) and the next page's token."""
        params: dict[str, Any] = {"pageSize": page_size}
        if filter:
            params["filter"] = filter
        if page_token:
            params["pageToken"] = page_token
        body = self._call("GET", location, f"{self.parent(location)}/batchPredictionJobs", params=params)
        jobs = body.get("batchPredictionJobs") or []
        if not isinstance(jobs, list):
            raise PermanentVertexError("batchPredictionJobs in the listing is not a list")
        return [BatchJob.from_json(job) for job in jobs], body.get("nextPageToken") or None

    def iter_batch_jobs(self, location: str, *, filter: str | None = None, page_size: int = 100,
                        max_pages: int = 1000) -> Iterator[BatchJob]:
        """Every job of every page (at most `max_pages`)."""
        token: str | None = None
        for _ in range(max_pages):
            jobs, token = self.list_batch_jobs(location, filter=filter, page_size=page_size, page_token=token)
            yield from jobs
            if not token:
                return
        raise PermanentVertexError(f"the job listing did not end after {max_pages} pages")

    def cancel_batch_job(self, name: str) -> None:
        """Ask Vertex AI to stop the job (best effort; it ends CANCELLED, or finishes anyway)."""
        self._call("POST", location_of(name), f"{name}:cancel", json_body={})

    def delete_batch_job(self, name: str) -> dict[str, Any]:
        """Delete a finished job's record; returns the long-running operation Vertex AI answers."""
        return self._call("DELETE", location_of(name), name)

    # -- interactive embeddings ------------------------------------------------------------------

    def embed_content(self, location: str, model: str, text: str, config: dict[str, Any]) -> tuple[list[float], int | None]:
        """`:embedContent` of a publisher model: one text's vector and its token count (if reported)."""
        path = f"{self.parent(location)}/publishers/google/models/{_model_id(model)}:embedContent"
        body = {"content": {"role": "user", "parts": [{"text": text}]}, "embedContentConfig": config}
        answer = self._call("POST", location, path, json_body=body)
        values = (answer.get("embedding") or {}).get("values")
        tokens = (answer.get("usageMetadata") or {}).get("promptTokenCount")
        return _vector(values, "embedContent"), _int(tokens, None)

    def predict_embedding(self, location: str, model: str, instance: dict[str, Any],
                          parameters: dict[str, Any]) -> tuple[list[float], int | None]:
        """`:predict` of a publisher text-embedding model (instances `{content, task_type, title}`)."""
        path = f"{self.parent(location)}/publishers/google/models/{_model_id(model)}:predict"
        answer = self._call("POST", location, path, json_body={"instances": [instance], "parameters": parameters})
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != 1:
            raise PermanentVertexError("predict answered without exactly one prediction")
        embeddings = (predictions[0] or {}).get("embeddings") or {}
        tokens = (embeddings.get("statistics") or {}).get("token_count")
        return _vector(embeddings.get("values"), "predict"), _int(tokens, None)

    # -- plumbing ---------------------------------------------------------------------------------

    def _url(self, location: str, path: str) -> str:
        return f"{self.base_url or endpoint_for(location)}/{API_VERSION}/{path}"

    def _call(self, method: str, location: str, path: str, *, json_body: Any = None,
              params: dict[str, Any] | None = None, idempotent: bool = True) -> dict[str, Any]:
        operation = f"{method} {path}"
        retry = 0
        refreshed = False
        while True:
            try:
                return self._send(method, self._url(location, path), operation, json_body, params)
            except VertexAuthError as error:
                if error.status_code != 401 or refreshed:
                    raise
                self._tokens.invalidate()  # an expired or revoked token: nothing was processed
                refreshed = True
            except RetryableVertexError as error:
                if retry >= self.max_retries or not (idempotent or error.reached_server is False):
                    raise
                wait = error.retry_after if error.retry_after is not None else self._rand() * min(60.0, 2.0 ** retry)
                _log.warning("Vertex AI call failed; retrying", operation=operation, status_code=error.status_code,
                             status=error.status, retry=retry + 1, wait_seconds=round(wait, 3))
                self._sleep(min(wait, 300.0))
                retry += 1

    def _send(self, method: str, url: str, operation: str, json_body: Any,
              params: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._tokens.token()}"}
        content = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            content = orjson.dumps(json_body)
        try:
            response = self._http.request(method, url, headers=headers, params=params, content=content)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, operation) from None
        if response.is_error:
            raise _http_error(response, operation)
        if not response.content:
            return {}
        try:
            body = orjson.loads(response.content)
        except ValueError:
            raise PermanentVertexError(f"answer is not JSON (HTTP {response.status_code})", operation=operation) from None
        if not isinstance(body, dict):
            raise PermanentVertexError("answer is not a JSON object", operation=operation)
        return body


def _transport_error(exc: httpx.HTTPError, operation: str) -> VertexError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _TRANSIENT):
        timed_out = isinstance(exc, httpx.TimeoutException)
        return RetryableVertexError(f"{'timed out' if timed_out else 'connection failed'} ({text})",
                                    status="DEADLINE_EXCEEDED" if timed_out else "UNAVAILABLE", operation=operation,
                                    reached_server=False if isinstance(exc, _NOT_SENT) else None)
    return PermanentVertexError(f"request failed ({text})", operation=operation)


def _http_error(response: httpx.Response, operation: str) -> VertexError:
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
    message = str(error.get("message") or response.text[:300].strip() or response.reason_phrase or f"HTTP {code}")
    if code in RETRYABLE_STATUS_CODES:
        kind: type[VertexError] = RetryableVertexError
    elif code == 404:
        kind = VertexNotFoundError
    elif code in (401, 403):
        kind = VertexAuthError
    else:
        kind = PermanentVertexError
    return kind(message, status_code=code, status=error.get("status") or _STATUS_BY_HTTP.get(code),
                request_id=response.headers.get("x-request-id") or response.headers.get("x-goog-request-id"),
                retry_after=_retry_after(response, error), operation=operation, reached_server=True)


def _retry_after(response: httpx.Response, error: dict[str, Any]) -> float | None:
    """The wait the server asked for: Retry-After (seconds or an HTTP date), else google.rpc.RetryInfo."""
    header = (response.headers.get("retry-after") or "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(header)
            return max(0.0, (when - datetime.now(when.tzinfo or UTC)).total_seconds())
        except (TypeError, ValueError, IndexError):
            pass
    for detail in error.get("details") or []:  # {"@type": ".../google.rpc.RetryInfo", "retryDelay": "37s"}
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def _model_id(model: str) -> str:
    plain = (model or "").strip("/ ").rsplit("/", 1)[-1]
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$", plain):
        raise InvalidArgumentError(f"not a model id: {model!r}")
    return plain


def _vector(values: Any, method: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise PermanentVertexError(f"{method} answered without embedding values")
    return [float(v) for v in values]


def _int(value: Any, default: int | None = 0) -> Any:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # RFC 3339 may carry nanoseconds: Python reads at most microseconds
        digits = re.match(r"\d*", rest)[0]  # type: ignore[index]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
