"""VertexBatchProvider: the pipeline's `BatchProvider` port over Vertex AI batch prediction (`shared.vertex`).

- Capabilities: gemini-embedding-001 (regional) and gemini-embedding-2 (`global`, `us`, `eu`) as Vertex AI
  documents them for batch: 1,000,000 rows and 1 GB of input per job, no predefined concurrency quota (so no
  ledger quota), real token counts per item. gemini-embedding-2 takes its task and title inside the text
  (`task_in_text`): `encode_text` writes the prompt prefixes its documentation gives.
- Inputs: staged items encoded as Vertex's input lines (`{"key", "request": {"content", "embed_content_config"}}`)
  and written straight to the staging prefix in Cloud Storage (one object per batch attempt, named after
  the batch's display name, so a retried prepare overwrites instead of leaking). Outputs: each job writes
  under its own prefix below the output prefix; results are read from the job's `outputInfo.gcsOutputDirectory`
  line by line and mapped by key, never by position.
- Recovery: the tag is a label (`embedpipe_tag`, a hash of the tag: label values are lowercase and short),
  listed with `filter=labels.embedpipe_tag=<value>` page by page in every location in use; the tag also ends
  the display name, for people.
- States: QUEUED/PENDING/PAUSED -> PENDING; RUNNING/UPDATING/CANCELLING -> RUNNING (CANCELLING is still in
  flight: the job may still export completed rows, so it is not over until CANCELLED);
  SUCCEEDED/PARTIALLY_SUCCEEDED -> SUCCEEDED (failed items come back as per-item errors); FAILED, CANCELLED,
  EXPIRED as they are.
- Errors: mapped in one place (`_mapped`) for every method: a 429 at create is `CapacityExhausted`, other
  retryable errors `TransientError`, 404 `NotFound`, the rest (401/403 included) `PermanentError`. Cloud
  Storage errors come already mapped by the blob store. No message carries a token.
- Deletes never leave the configured prefixes: an input is deleted only under the staging prefix, results
  only under the output prefix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared.domain.capabilities import Capabilities, Quotas
from shared.domain.jobs import ErrorInfo
from shared.domain.options import JobOptions
from shared.errors import CapacityExhausted, NotFound, PermanentError, PipelineError, TransientError
from shared.logging import get_logger
from shared.ports import BatchProvider, BlobStore, ItemResult, ProviderBatch, ProviderState, StagedItem
from shared.vertex import (
    AdcTokens,
    BatchJob,
    PermanentVertexError,
    RetryableVertexError,
    StaticToken,
    VertexAuthError,
    VertexClient,
    VertexError,
    VertexNotFoundError,
)

__all__ = [
    "FIND_MARGIN",
    "LABEL_KEY",
    "MODEL_LOCATIONS",
    "VERTEX_MODELS",
    "VertexBatchProvider",
    "encode_text",
    "parse_output_line",
    "request_line",
    "tag_label",
    "to_provider_batch",
]

FIND_MARGIN = timedelta(minutes=5)
LABEL_KEY = "embedpipe_tag"
_DISPLAY_NAME_MAX = 128
_WRITE_CHUNK = 4 * 1024 * 1024
GB = 1000 ** 3

TASK_TYPES = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
              "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY", "TASK_TYPE_UNSPECIFIED")

VERTEX_MODELS = {
    "gemini-embedding-001": Capabilities(
        provider="vertex", model="gemini-embedding-001", task_types=TASK_TYPES,
        default_task_type="RETRIEVAL_DOCUMENT", min_dimensions=128, max_dimensions=3072,
        recommended_dimensions=(768, 1536, 3072), max_input_tokens=2048, max_batch_rows=1_000_000,
        max_batch_bytes=1 * GB, title_task_types=("RETRIEVAL_DOCUMENT",), reports_tokens=True,
        quotas=Quotas(enqueued_tokens=None, concurrent_batches=None, file_storage_bytes=None),
        price_batch_per_million=0.075, price_interactive_per_million=0.15,
    ),
    "gemini-embedding-2": Capabilities(
        provider="vertex", model="gemini-embedding-2", task_types=TASK_TYPES,
        default_task_type="RETRIEVAL_DOCUMENT", min_dimensions=128, max_dimensions=3072,
        recommended_dimensions=(768, 1536, 3072), max_input_tokens=8192, max_batch_rows=1_000_000,
        max_batch_bytes=1 * GB, title_task_types=("RETRIEVAL_DOCUMENT",), task_in_text=True, reports_tokens=True,
        quotas=Quotas(enqueued_tokens=None, concurrent_batches=None, file_storage_bytes=None),
        price_batch_per_million=0.10, price_interactive_per_million=0.20,  # third-party listing: unconfirmed
    ),
}

#: Where Vertex AI serves each model in batch (its batch embeddings page).
MODEL_LOCATIONS = {
    "gemini-embedding-001": frozenset({"us-central1", "us-east1", "us-east4", "us-west1", "us-west4",
                                       "europe-west1", "europe-west4"}),
    "gemini-embedding-2": frozenset({"global", "us", "eu"}),
}

#: gemini-embedding-2's prompt prefixes (its documentation: "include the task as an instruction in your prompt").
_QUERY_TASKS = {
    "RETRIEVAL_QUERY": "search result",
    "QUESTION_ANSWERING": "question answering",
    "FACT_VERIFICATION": "fact checking",
    "CODE_RETRIEVAL_QUERY": "code retrieval",
    "CLASSIFICATION": "classification",
    "CLUSTERING": "clustering",
    "SEMANTIC_SIMILARITY": "sentence similarity",
}

_STATES = {
    "JOB_STATE_UNSPECIFIED": ProviderState.PENDING,
    "JOB_STATE_QUEUED": ProviderState.PENDING,
    "JOB_STATE_PENDING": ProviderState.PENDING,
    "JOB_STATE_PAUSED": ProviderState.PENDING,
    "JOB_STATE_RUNNING": ProviderState.RUNNING,
    "JOB_STATE_UPDATING": ProviderState.RUNNING,
    "JOB_STATE_CANCELLING": ProviderState.RUNNING,  # in flight: may still export rows
    "JOB_STATE_SUCCEEDED": ProviderState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": ProviderState.SUCCEEDED,
    "JOB_STATE_FAILED": ProviderState.FAILED,
    "JOB_STATE_CANCELLED": ProviderState.CANCELLED,
    "JOB_STATE_EXPIRED": ProviderState.EXPIRED,
}
_RESULT_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"})
_ENDED_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED",
                           "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_CANCELLING"})
_RPC_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")

_log = get_logger(__name__)


@contextmanager
def _mapped(what: str, *, quota_means_capacity: bool = False) -> Iterator[None]:
    """Vertex AI's errors, as the pipeline's: the one place they are mapped (the blob store's errors are
    already the pipeline's and pass unchanged)."""
    try:
        yield
    except PipelineError:
        raise
    except RetryableVertexError as exc:
        if quota_means_capacity and exc.status_code == 429:
            raise CapacityExhausted(f"{what}: {exc}", retry_after=exc.retry_after) from exc
        raise TransientError(f"{what}: {exc}", code=exc.status or "UNAVAILABLE") from exc
    except VertexNotFoundError as exc:
        raise NotFound(f"{what}: {exc}") from exc
    except VertexError as exc:
        raise PermanentError(f"{what}: {exc}", code=exc.status or "FAILED_PRECONDITION") from exc


def tag_label(tag: str) -> str:
    """The label value that carries a tag: label values are lowercase [a-z0-9_-], at most 63 characters, and
    a tag is neither; a hash is deterministic, so a crashed worker's successor computes the same value."""
    return "t" + hashlib.sha256(tag.encode("utf-8")).hexdigest()[:40]


def encode_text(item: StagedItem, task_type: str, capabilities: Capabilities) -> str:
    """The text a model sees. For a model that takes its task in the text (gemini-embedding-2): documents as
    `title: {title or none} | text: {text}`, queries and other tasks as `task: {task} | query: {text}`."""
    if not capabilities.task_in_text or task_type == "TASK_TYPE_UNSPECIFIED":
        return item.text
    if task_type == "RETRIEVAL_DOCUMENT":
        return f"title: {item.title or 'none'} | text: {item.text}"
    return f"task: {_QUERY_TASKS[task_type]} | query: {item.text}"


def request_line(item: StagedItem, options: JobOptions, capabilities: Capabilities) -> bytes:
    """One line of a Vertex AI batch input file."""
    config: dict[str, Any] = {"output_dimensionality": options.output_dimensionality}
    if not capabilities.task_in_text:
        if options.task_type != "TASK_TYPE_UNSPECIFIED":
            config["task_type"] = options.task_type
        if item.title and options.task_type in capabilities.title_task_types:
            config["title"] = item.title
    request = {"content": {"parts": [{"text": encode_text(item, options.task_type, capabilities)}]},
               "embed_content_config": config}
    return orjson.dumps({"key": item.key, "request": request}) + b"\n"


class VertexBatchProvider(BatchProvider):
    name = "vertex"

    def __init__(self, client: VertexClient, blobs: BlobStore, *, staging_prefix: str, output_prefix: str,
                 location: str = "us-central1", model_locations: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, find_margin: timedelta = FIND_MARGIN):
        self.client = client
        self.blobs = blobs
        self.staging_prefix = _gs_prefix(staging_prefix, "VERTEX_STAGING_PREFIX")
        self.output_prefix = _gs_prefix(output_prefix, "VERTEX_OUTPUT_PREFIX")
        self.location = location
        self.model_locations = {"gemini-embedding-2": _multi_region_of(location), **(model_locations or {})}
        self.labels = _checked_labels(labels or {})
        self.find_margin = find_margin

    @classmethod
    def from_settings(cls, settings: Any) -> VertexBatchProvider:
        """A provider configured by the pipeline's settings (names in the module of the settings; every
        VERTEX_* setting has a default here, so an older settings object still builds one)."""
        from google.cloud import storage

        from shared.adapters.gcs_blobs import GcsBlobStore

        def setting(name: str, default: Any = "") -> Any:
            value = getattr(settings, name, default)
            return value.get_secret_value() if hasattr(value, "get_secret_value") else value

        staging_root = f"gs://{settings.output_bucket}/{settings.output_prefix}_staging/_vertex/"
        token = setting("vertex_access_token")
        base_url = setting("vertex_api_base_url") or None
        if token and base_url is None:
            raise PermanentError("VERTEX_ACCESS_TOKEN is for a local emulator (VERTEX_API_BASE_URL): on Google "
                                 "Cloud the functions use Application Default Credentials", code="INVALID_SETTING")
        project = setting("vertex_project") or settings.google_cloud_project
        client = VertexClient(project, tokens=StaticToken(token) if token else AdcTokens(), base_url=base_url,
                              timeout=float(setting("vertex_timeout_seconds", 60.0)),
                              max_retries=int(setting("vertex_max_retries", 5)))
        return cls(client, GcsBlobStore(storage.Client(project=settings.google_cloud_project)),
                   staging_prefix=setting("vertex_staging_prefix") or staging_root + "inputs/",
                   output_prefix=setting("vertex_output_prefix") or staging_root + "outputs/",
                   location=setting("vertex_location") or "us-central1",
                   model_locations=_pairs(setting("vertex_model_locations"), "VERTEX_MODEL_LOCATIONS"),
                   labels=_pairs(setting("vertex_labels"), "VERTEX_LABELS"))

    # -- the port ---------------------------------------------------------------------------------

    def capabilities(self, model: str) -> Capabilities:
        plain = model.rsplit("/", 1)[-1]
        if plain not in VERTEX_MODELS:
            raise PermanentError(f"Vertex AI batch prediction serves no embedding model {model!r} (known: "
                                 f"{', '.join(VERTEX_MODELS)})", code="UNKNOWN_MODEL")
        location = self.location_for(plain)
        if location not in MODEL_LOCATIONS[plain]:
            raise PermanentError(f"Vertex AI serves {plain} in batch only in {', '.join(sorted(MODEL_LOCATIONS[plain]))}, "
                                 f"not in {location} (set VERTEX_LOCATION or VERTEX_MODEL_LOCATIONS)",
                                 code="UNSUPPORTED_LOCATION")
        return VERTEX_MODELS[plain]

    def location_for(self, model: str) -> str:
        return self.model_locations.get(model.rsplit("/", 1)[-1], self.location)

    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions, display_name: str) -> tuple[str, int]:
        """One pass: the lines are streamed to `<staging prefix><name>.jsonl` (a resumable upload that
        appears whole or not at all). Over the model's row or byte limit: `PermanentError`, nothing kept."""
        capabilities = self.capabilities(options.model)
        uri = f"{self.staging_prefix}{_object_stem(display_name)}.jsonl"
        size = rows = 0
        with _mapped(f"writing the batch input {uri}"), self.blobs.open_write(uri, "application/jsonl") as out:
            buffer: list[bytes] = []
            held = 0
            for item in items():
                line = request_line(item, options, capabilities)
                buffer.append(line)
                held += len(line)
                size += len(line)
                rows += 1
                if size > capabilities.max_batch_bytes or rows > (capabilities.max_batch_rows or rows):
                    raise PermanentError(f"a Vertex AI batch takes at most {capabilities.max_batch_rows:,} rows and "
                                         f"{capabilities.max_batch_bytes:,} bytes; this shard is larger",
                                         code="BATCH_TOO_LARGE")
                if held >= _WRITE_CHUNK:
                    out.write(b"".join(buffer))
                    buffer, held = [], 0
            out.write(b"".join(buffer))
        return uri, size

    def create_batch(self, *, options: JobOptions, input_ref: str, display_name: str, tag: str) -> ProviderBatch:
        plain = self.capabilities(options.model).model
        stem = self._own_input(input_ref).rsplit("/", 1)[-1].removesuffix(".jsonl")
        body = {
            "displayName": _display_name(display_name, tag),
            "model": f"publishers/google/models/{plain}",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [input_ref]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": f"{self.output_prefix}{stem}/"}},
            "labels": {**self.labels, LABEL_KEY: tag_label(tag)},
        }
        with _mapped("creating a batch prediction job", quota_means_capacity=True):
            return to_provider_batch(self.client.create_batch_job(self.location_for(plain), body))

    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        """Every page, in every location in use: the jobs labelled with the tag's value (checked again
        here, whatever the server's filter did), created after `created_after` less `find_margin`."""
        value = tag_label(tag)
        cutoff = _aware(created_after) - self.find_margin
        found = []
        with _mapped("listing batch prediction jobs"):
            for location in sorted({self.location, *self.model_locations.values()}):
                for job in self.client.iter_batch_jobs(location, filter=f"labels.{LABEL_KEY}={value}"):
                    created = _aware(job.create_time) if job.create_time else None
                    if job.labels.get(LABEL_KEY) == value and (created is None or created >= cutoff):
                        found.append(to_provider_batch(job))
        return found

    def get_batch(self, name: str) -> ProviderBatch:
        with _mapped(f"reading {name}"):
            return to_provider_batch(self.client.get_batch_job(name))

    def cancel_batch(self, name: str) -> None:
        """Best effort. A job that no longer exists, has ended or is already cancelling is left as it is
        (Vertex AI refuses to cancel it); other errors propagate."""
        with _mapped(f"cancelling {name}"):
            try:
                self.client.cancel_batch_job(name)
            except VertexNotFoundError:
                _log.info("batch prediction job to cancel does not exist", batch=name)
            except VertexAuthError:
                raise
            except PermanentVertexError:
                state = self.client.get_batch_job(name).state
                if state not in _ENDED_STATES:
                    raise
                _log.info("batch prediction job to cancel had already ended", batch=name, state=state)

    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        """Every line of every JSONL file under the job's output directory, in name order, from the
        `start`-th (the lines before it are read, not parsed)."""
        skipped = 0
        with _mapped(f"reading the results of {name}"):
            job = self.client.get_batch_job(name)
            if job.state not in _RESULT_STATES:
                raise PermanentError(f"{name} has no results to read: it is {job.state}", code="FAILED_PRECONDITION")
            if not job.output_directory:
                raise PermanentError(f"{name} ended {job.state} without an output directory")
            directory = job.output_directory.rstrip("/") + "/"
            files = sorted(b.uri for b in self.blobs.list(directory) if b.uri.endswith(".jsonl"))
            for uri in files:
                with self.blobs.open_read(uri) as stream:
                    for number, line in enumerate(stream, start=1):
                        if not line.strip():
                            continue
                        if skipped < start:
                            skipped += 1
                            continue
                        yield parse_output_line(line, f"line {number} of {uri}")

    def delete_input(self, input_ref: str) -> None:
        with _mapped(f"deleting {input_ref}"):
            self.blobs.delete(self._own_input(input_ref))

    def delete_results(self, name: str) -> bool:
        """Delete the objects under the job's output directory. False when that directory is not under the
        output prefix (never deleted: not ours). A job gone, or one that wrote nothing, has nothing left."""
        with _mapped(f"deleting the results of {name}"):
            try:
                job = self.client.get_batch_job(name)
            except VertexNotFoundError:
                return True
            directory = job.output_directory
            if not directory:
                return True
            directory = directory.rstrip("/") + "/"
            if not directory.startswith(self.output_prefix):
                _log.warning("results outside the output prefix are left alone", batch=name, directory=directory)
                return False
            for blob in list(self.blobs.list(directory)):
                self.blobs.delete(blob.uri)
        return True

    def embed_query(self, text: str, options: JobOptions) -> list[float]:
        """gemini-embedding-001 through `:predict` (task type as a field), models that take the task in the
        text through `:embedContent` (task as a prompt prefix)."""
        capabilities = self.capabilities(options.model)
        location = self.location_for(capabilities.model)
        with _mapped("embedding a query"):
            if capabilities.task_in_text:
                query = encode_text(StagedItem(key="q", text=text), "RETRIEVAL_QUERY", capabilities)
                values, _ = self.client.embed_content(location, capabilities.model, query,
                                                      {"outputDimensionality": options.output_dimensionality})
            else:
                values, _ = self.client.predict_embedding(
                    location, capabilities.model, {"content": text, "task_type": "RETRIEVAL_QUERY"},
                    {"outputDimensionality": options.output_dimensionality})
        return values

    def result_bytes(self, items: int, dimensions: int) -> int:
        """Output lines repeat the request next to the vector."""
        return items * (dimensions * 12 + 512)

    def _own_input(self, input_ref: str) -> str:
        if not input_ref.startswith(self.staging_prefix) or not input_ref.endswith(".jsonl"):
            raise PermanentError(f"{input_ref!r} is not a batch input of this provider (under {self.staging_prefix})",
                                 code="FAILED_PRECONDITION")
        return input_ref


# -- mapping ------------------------------------------------------------------------------------------------


def to_provider_batch(job: BatchJob) -> ProviderBatch:
    stats = job.stats
    succeeded = stats.successful if stats else 0
    failed = stats.failed if stats else 0
    pending = max(stats.incomplete, 0) if stats else 0
    state = _STATES.get(job.state, ProviderState.PENDING)
    error = None
    if job.error is not None and (job.error.code or job.error.message):
        error = ErrorInfo(code=_rpc_name(job.error.code), message=job.error.message or job.state)
    elif state in (ProviderState.FAILED, ProviderState.EXPIRED):
        error = ErrorInfo(code=job.state.removeprefix("JOB_STATE_"), message=f"the batch prediction job ended {job.state}")
    return ProviderBatch(name=job.name, state=state, display_name=job.display_name, total=succeeded + failed + pending,
                         succeeded=succeeded, failed=failed, pending=pending, error=error, create_time=job.create_time)


def parse_output_line(line: bytes, where: str) -> ItemResult:
    """One output line: `{"key", "request", "response": {"embedding": {"values"}, "tokenCount"}}`, or the
    same with a `status` (a string, possibly wrapping a JSON error, or a google.rpc.Status) instead of the
    response. Raises `PermanentError` for a line that is not one of those."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise PermanentError(f"{where}: not JSON", code="BAD_RESULT") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str | int) or isinstance(obj.get("key"), bool):
        raise PermanentError(f"{where}: a result line without a key", code="BAD_RESULT")
    key = str(obj["key"])
    problem = obj.get("status") or obj.get("error")
    if problem:
        return ItemResult(key=key, error=_line_error(problem))
    response = obj.get("response")
    if not isinstance(response, dict):
        return ItemResult(key=key, error=ErrorInfo(code="UNKNOWN", message="the result carries neither a response nor a status"))
    values = (response.get("embedding") or {}).get("values")
    if not isinstance(values, list) or not values:
        return ItemResult(key=key, error=ErrorInfo(code="UNKNOWN", message="the response carries no embedding"))
    tokens = response.get("tokenCount", (response.get("usageMetadata") or {}).get("promptTokenCount"))
    try:
        return ItemResult(key=key, values=[float(v) for v in values], tokens=int(tokens) if tokens is not None else None)
    except (TypeError, ValueError):
        raise PermanentError(f"{where}: unreadable embedding values or token count", code="BAD_RESULT") from None


def _line_error(problem: Any) -> ErrorInfo:
    if isinstance(problem, dict):
        return _status_info(problem)
    text = str(problem)
    start = text.find("{")
    if start >= 0:  # e.g. 'Bad Request: {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}'
        try:
            wrapped = orjson.loads(text[start:])
        except orjson.JSONDecodeError:
            wrapped = None
        if isinstance(wrapped, dict):
            return _status_info(wrapped.get("error") if isinstance(wrapped.get("error"), dict) else wrapped)
    return ErrorInfo(code="UNKNOWN", message=text or "failed")


def _status_info(status: dict[str, Any]) -> ErrorInfo:
    name = status.get("status")
    code = status.get("code")
    if not isinstance(name, str) or not name:
        name = _rpc_name(code) if isinstance(code, int) and not 100 <= code < 600 else _http_name(code)
    return ErrorInfo(code=name, message=str(status.get("message") or name))


def _rpc_name(code: Any) -> str:
    return _RPC_NAMES[code] if isinstance(code, int) and 0 <= code < len(_RPC_NAMES) else "UNKNOWN"


def _http_name(code: Any) -> str:
    return {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(code, "UNKNOWN")


# -- settings and names ------------------------------------------------------------------------------------


def _display_name(display_name: str, tag: str) -> str:
    name = display_name if display_name.endswith(tag) else f"{display_name} {tag}"
    return name if len(name) <= _DISPLAY_NAME_MAX else "…" + name[-(_DISPLAY_NAME_MAX - 1):]


def _object_stem(display_name: str) -> str:
    """A readable, unique object name for one batch attempt's input: the end of its display name (which ends
    with the attempt's tag) as a slug, and a hash of the whole."""
    slug = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")[-48:].strip("-")
    digest = hashlib.sha256(display_name.encode("utf-8")).hexdigest()[:16]
    return f"{slug}-{digest}" if slug else digest


def _multi_region_of(location: str) -> str:
    """Where gemini-embedding-2 runs when not configured: the multi-region of the configured region (data
    stays in the EU or the US), else `global`."""
    if location in MODEL_LOCATIONS["gemini-embedding-2"]:
        return location
    return "eu" if location.startswith("europe-") else "us" if location.startswith("us-") else "global"


def _gs_prefix(value: str, setting: str) -> str:
    if not isinstance(value, str) or not re.match(r"^gs://[a-z0-9][a-z0-9._-]{1,220}/", value):
        raise PermanentError(f"{setting} must be a gs://bucket/prefix/ URI, not {value!r}", code="INVALID_SETTING")
    return value if value.endswith("/") else value + "/"


def _pairs(text: str, setting: str) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"}; anything else is a clear error naming the setting."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise PermanentError(f"{setting}: {part!r} is not key=value", code="INVALID_SETTING")
        pairs[key] = value
    return pairs


def _checked_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if key == LABEL_KEY or not _LABEL.match(key) or not _LABEL_VALUE.match(value):
            raise PermanentError(f"VERTEX_LABELS: {key}={value} is not a label Vertex AI accepts (lowercase letters, "
                                 f"digits, _ and -, at most 63 characters, keys start with a letter; not {LABEL_KEY})",
                                 code="INVALID_SETTING")
    if len(labels) >= 64:
        raise PermanentError("VERTEX_LABELS: at most 63 labels (a job takes 64, one is the pipeline's)",
                             code="INVALID_SETTING")
    return dict(labels)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

