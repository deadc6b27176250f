"""Typed views of the Gemini API's batch, file and embedding messages.

The models keep the wire's lowerCamelCase names as aliases and accept the Python names too
(`populate_by_name`); int64 fields, which the API sends as strings ("12"), are parsed to int. Fields the
client does not know are ignored, so a new API field does not break parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SkipValidation
from pydantic.alias_generators import to_camel

__all__ = [
    "DEFAULT_MODEL",
    "MAX_DIMENSIONS",
    "MAX_INPUT_TOKENS",
    "MIN_DIMENSIONS",
    "TaskType",
    "model_resource",
    "BatchItemResult",
    "BatchPage",
    "BatchState",
    "BatchStats",
    "Content",
    "EmbedContentRequest",
    "EmbeddingBatch",
    "File",
    "Part",
    "ResultFormatError",
    "Status",
    "parse_result",
]

DEFAULT_MODEL = "gemini-embedding-001"
#: gemini-embedding-001's output sizes and input limit (tokens of one input).
MIN_DIMENSIONS = 128
MAX_DIMENSIONS = 3072
MAX_INPUT_TOKENS = 2048


def model_resource(model: str) -> str:
    """The API's resource name of a model: `models/NAME`, whether given as `NAME` or already so."""
    return model if "/" in model else f"models/{model}"


class TaskType(StrEnum):
    """The Gemini API's TaskType values, as the wire spells them."""

    TASK_TYPE_UNSPECIFIED = "TASK_TYPE_UNSPECIFIED"
    RETRIEVAL_QUERY = "RETRIEVAL_QUERY"
    RETRIEVAL_DOCUMENT = "RETRIEVAL_DOCUMENT"
    SEMANTIC_SIMILARITY = "SEMANTIC_SIMILARITY"
    CLASSIFICATION = "CLASSIFICATION"
    CLUSTERING = "CLUSTERING"
    QUESTION_ANSWERING = "QUESTION_ANSWERING"
    FACT_VERIFICATION = "FACT_VERIFICATION"
    CODE_RETRIEVAL_QUERY = "CODE_RETRIEVAL_QUERY"

    @classmethod
    def parse(cls, value: str | TaskType) -> TaskType:
        """Accepts the wire name in any case, with or without dashes (`retrieval-document`); raises
        ValueError naming the allowed values otherwise."""
        if isinstance(value, TaskType):
            return value
        normalised = str(value).strip().upper().replace("-", "_")
        try:
            return cls(normalised)
        except ValueError:
            raise ValueError(f"invalid task_type {value!r}: allowed values are {', '.join(t.value for t in cls)}") from None



class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the API expects: camelCase names, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- states ---------------------------------------------------------------------------------------


class BatchState(StrEnum):
    """A batch's state as the wire spells it. Also parses the SDK's `JOB_STATE_*` spellings; a state
    this client does not know reads as UNSPECIFIED, which is not terminal."""

    UNSPECIFIED = "BATCH_STATE_UNSPECIFIED"
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"

    @classmethod
    def _missing_(cls, value: object) -> BatchState:
        text = str(value).strip().upper()
        for prefix in ("BATCH_STATE_", "JOB_STATE_"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        return _STATE_ALIASES.get(text, cls.UNSPECIFIED)

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def friendly(self) -> str:
        """The guide's name: pending, processing, completed, failed, cancelled or expired."""
        return _FRIENDLY[self]


_STATE_ALIASES = {
    "UNSPECIFIED": BatchState.UNSPECIFIED,
    "PENDING": BatchState.PENDING,
    "QUEUED": BatchState.PENDING,
    "PAUSED": BatchState.PENDING,
    "RUNNING": BatchState.RUNNING,
    "UPDATING": BatchState.RUNNING,
    "CANCELLING": BatchState.RUNNING,  # not over yet: it may still end SUCCEEDED
    "SUCCEEDED": BatchState.SUCCEEDED,
    "PARTIALLY_SUCCEEDED": BatchState.SUCCEEDED,  # results exist; failed items carry errors
    "FAILED": BatchState.FAILED,
    "CANCELLED": BatchState.CANCELLED,
    "EXPIRED": BatchState.EXPIRED,
}
_TERMINAL = frozenset({BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED})
_FRIENDLY = {
    BatchState.UNSPECIFIED: "pending",  # not started as far as anyone can tell
    BatchState.PENDING: "pending",
    BatchState.RUNNING: "processing",
    BatchState.SUCCEEDED: "completed",
    BatchState.FAILED: "failed",
    BatchState.CANCELLED: "cancelled",
    BatchState.EXPIRED: "expired",
}

#: google.rpc.Code numbers to names, for errors that carry only the number.
_RPC_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


# -- small messages -------------------------------------------------------------------------------


class Status(_Wire):
    """A google.rpc.Status: a batch's or an item's error. `status` appears in HTTP error bodies only."""

    code: int | None = None
    message: str = ""
    status: str | None = None
    details: list[Any] = Field(default_factory=list)

    @property
    def name(self) -> str:
        """The status name (`RESOURCE_EXHAUSTED`), derived from the numeric code when absent."""
        if self.status:
            return self.status
        if self.code is None:
            return "UNKNOWN"
        return _RPC_CODE_NAMES.get(self.code, str(self.code))


class BatchStats(_Wire):
    request_count: int = 0
    successful_request_count: int = 0
    failed_request_count: int = 0
    pending_request_count: int = 0

    @property
    def finished_count(self) -> int:
        return self.successful_request_count + self.failed_request_count

    @property
    def progress_percentage(self) -> float:
        """Finished (succeeded or failed) items, as 0..100 of all; 0.0 for an empty batch."""
        if self.request_count <= 0:
            return 0.0
        return min(100.0, 100.0 * self.finished_count / self.request_count)

    @property
    def success_rate(self) -> float | None:
        """Succeeded items, as 0..100 of the finished ones; None while none has finished."""
        if self.finished_count <= 0:
            return None
        return 100.0 * self.successful_request_count / self.finished_count


class Part(_Wire):
    text: str


class Content(_Wire):
    parts: list[Part]


class EmbedContentRequest(_Wire):
    """One embedding request. `title` is only valid with RETRIEVAL_DOCUMENT (the client checks)."""

    model: str | None = None
    content: Content
    task_type: TaskType | None = None
    title: str | None = None
    output_dimensionality: int | None = None

    @classmethod
    def of_text(cls, text: str, **fields: Any) -> EmbedContentRequest:
        return cls(content=Content(parts=[Part(text=text)]), **fields)


class File(_Wire):
    """A Files API resource (`files/...`)."""

    name: str
    display_name: str | None = None
    mime_type: str | None = None
    size_bytes: int | None = None
    state: str | None = None  # STATE_UNSPECIFIED, PROCESSING, ACTIVE, FAILED
    uri: str | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    expiration_time: datetime | None = None


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """One item of a finished batch: its key and either its vector or its error."""

    key: str
    values: list[float] | None = None
    error: Status | None = None
    token_count: int | None = None  # where the response reports it (`tokenCount`; not documented for Batch Mode)

    @property
    def ok(self) -> bool:
        return self.error is None and self.values is not None


class ResultFormatError(ValueError):
    """A result line or inline response the client cannot map to a request."""


def parse_result(obj: Mapping[str, Any], position: int) -> BatchItemResult:
    """Read one inline response or one line of a responses file.

    Tolerant of the shapes seen in the wild: the key at the top level (`{"key", "response"}` file lines)
    or in `metadata.key` (inline responses); the vector in `response.embedding` or
    `response.embeddings[0]`. A result without a key raises `ResultFormatError`: results come back in
    any order, so guessing from the position would silently pair vectors with the wrong texts.
    """
    if not isinstance(obj, Mapping):
        raise ResultFormatError(f"result #{position} is not a JSON object")
    metadata = obj.get("metadata")
    key = obj.get("key")
    if key is None and isinstance(metadata, Mapping):
        key = metadata.get("key")
    if key is None:
        raise ResultFormatError(f"result #{position} carries no key")
    key = str(key)
    error = obj.get("error")
    if error:
        return BatchItemResult(key, None, Status.model_validate(error))
    response = obj.get("response", obj)
    embedding = response.get("embedding") if isinstance(response, Mapping) else None
    if embedding is None and isinstance(response, Mapping):
        many = response.get("embeddings")
        embedding = many[0] if isinstance(many, list) and many else None
    values = embedding.get("values") if isinstance(embedding, Mapping) else None
    if not isinstance(values, list):
        return BatchItemResult(
            key,
            None,
            Status(code=13, status="INTERNAL", message="result carries neither an embedding nor an error"),
        )
    tokens = response.get("tokenCount", response.get("token_count"))
    count = int(tokens) if isinstance(tokens, int | str) and str(tokens).isdigit() else None
    return BatchItemResult(key, values, None, count)  # JSON numbers as parsed: converting costs as much as parsing


# -- the batch --------------------------------------------------------------------------------------


class EmbeddingBatch(_Wire):
    """An embedding batch, read from the Operation the API returns for it (`from_operation`).

    The output is either `inlined_responses` (already parsed) or `responses_file` (a `files/...` name);
    both are empty until the batch SUCCEEDED.
    """

    name: str
    display_name: str = ""
    model: str | None = None
    state: BatchState = BatchState.UNSPECIFIED
    create_time: datetime | None = None
    update_time: datetime | None = None
    end_time: datetime | None = None
    batch_stats: BatchStats | None = None
    priority: int = 0
    done: bool = False
    error: Status | None = None
    # Parsed by `parse_result` already; validating every float again would only cost time.
    inlined_responses: Annotated[list[BatchItemResult] | None, SkipValidation] = Field(
        default=None, repr=False
    )
    responses_file: str | None = None

    @classmethod
    def from_operation(cls, operation: Mapping[str, Any], *, with_output: bool = True) -> EmbeddingBatch:
        """Parse an Operation (`{name, metadata: {...batch}, done, error, response}`).

        Reads the output from `metadata.output` and from the finished operation's `response`, whichever
        carries it, and the inline responses under either `inlinedResponses` or
        `inlinedEmbedContentResponses`. Raises `ResultFormatError` for an inline response without a key.
        `with_output=False` skips the output (listings: other kinds of batches may be listed too).
        """
        metadata = dict(operation.get("metadata") or {})
        fields: dict[str, Any] = {k: v for k, v in metadata.items() if k not in ("output", "@type")}
        fields["name"] = operation.get("name") or metadata.get("name") or ""
        fields["done"] = bool(operation.get("done", False))
        error = operation.get("error") or metadata.get("error")
        if error:
            fields["error"] = error
        outputs = _outputs(metadata.get("output"), operation.get("response")) if with_output else []
        for output in outputs:
            if output.get("responsesFile") or output.get("responses_file"):
                fields["responses_file"] = output.get("responsesFile") or output.get("responses_file")
            inline = _inline_list(output)
            if inline is not None:
                fields["inlined_responses"] = [parse_result(item, i) for i, item in enumerate(inline)]
        return cls.model_validate(fields)

    @property
    def status(self) -> str:
        """The guide's name of the state: pending, processing, completed, failed, cancelled, expired."""
        return self.state.friendly

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def request_count(self) -> int:
        return self.batch_stats.request_count if self.batch_stats else 0

    @property
    def progress_percentage(self) -> float:
        return self.batch_stats.progress_percentage if self.batch_stats else 0.0

    @property
    def success_rate(self) -> float | None:
        return self.batch_stats.success_rate if self.batch_stats else None


def _outputs(*candidates: Any) -> list[Mapping[str, Any]]:
    found = []
    for candidate in candidates:
        if not isinstance(candidate, Mapping):
            continue
        # The operation's `response` may hold the output itself or wrap it in `output`.
        inner = candidate.get("output")
        found.append(inner if isinstance(inner, Mapping) else candidate)
    return found


def _inline_list(output: Mapping[str, Any]) -> list[Any] | None:
    for field in ("inlinedResponses", "inlinedEmbedContentResponses", "inlined_responses"):
        value = output.get(field)
        if isinstance(value, Mapping):  # an empty container is an empty list (proto3 JSON drops it)
            value = value.get("inlinedResponses", value.get("inlined_responses", []))
        if isinstance(value, list):
            return value
    return None


@dataclass(frozen=True, slots=True)
class BatchPage:
    batches: list[EmbeddingBatch]
    next_page_token: str | None = None
