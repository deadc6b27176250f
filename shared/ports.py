"""The ports: what the use cases need from the outside world, and nothing more.

Adapters (`shared.adapters`) implement them over Firestore, GCS, Pub/Sub and the Gemini API; unit tests
implement them in memory (`tests/fakes.py`). Objects are addressed by `gs://bucket/name` URIs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO, TypeVar

from shared.domain.jobs import ErrorInfo, Job, JobState

__all__ = [
    "BatchProvider",
    "BlobInfo",
    "BlobStore",
    "ItemResult",
    "JobRepository",
    "MessagePublisher",
    "ProviderBatch",
    "ProviderState",
]

T = TypeVar("T")


# -- jobs ---------------------------------------------------------------------------------------


class JobRepository(abc.ABC):
    @abc.abstractmethod
    def create(self, job: Job) -> tuple[Job, bool]:
        """Store `job` unless a job with its id exists. Returns the stored job and whether it was created.

        Atomic: of any number of concurrent calls for one id, exactly one creates.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abc.abstractmethod
    def update(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T]:
        """Read the job, apply `change` (which mutates it), write it back, atomically.

        `change` may run several times under contention, so it must have no other effect. An exception
        from `change` aborts the update and propagates. Raises `NotFound` when there is no such job.
        """

    @abc.abstractmethod
    def replace_if_unchanged(self, job: Job) -> bool:
        """Write `job` whole, in one write and no read, only if its document has not been written since
        `job` was read (by `get`, `due`, `list`, or an `update` that changed nothing). False, writing nothing,
        when another writer came first.
        """

    @abc.abstractmethod
    def due(self, now: datetime, limit: int) -> list[Job]:
        """Active jobs whose `next_poll_at` has passed, the longest overdue first, at most `limit`."""

    @abc.abstractmethod
    def list(
        self, *, state: JobState | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Jobs, newest first, optionally in one state. Returns a page and the token of the next one."""


# -- objects ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobInfo:
    uri: str
    size: int
    generation: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    crc32c: str | None = None
    md5: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def stat(self, uri: str) -> BlobInfo | None:
        """The object's metadata, or None when it does not exist."""

    @abc.abstractmethod
    def open_read(self, uri: str, generation: str | None = None) -> AbstractContextManager[BinaryIO]:
        """A streaming reader of the object's stored bytes (no transcoding). Raises `NotFound`."""

    @abc.abstractmethod
    def open_write(self, uri: str, content_type: str) -> AbstractContextManager[BinaryIO]:
        """A streaming writer. The object appears whole when the block exits cleanly, and not at all
        (or unchanged) when it exits with an exception."""

    @abc.abstractmethod
    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        """Write a small object at once."""

    @abc.abstractmethod
    def list(self, prefix_uri: str) -> Iterator[BlobInfo]:
        """Objects whose URI starts with `prefix_uri`."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Delete the object; deleting a missing object is not an error."""


# -- messages -----------------------------------------------------------------------------------


class MessagePublisher(abc.ABC):
    @abc.abstractmethod
    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        """Publish and wait for the broker's acknowledgement; returns the message id."""


# -- the embedding provider ---------------------------------------------------------------------


class ProviderState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    name: str
    state: ProviderState
    display_name: str = ""
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    error: ErrorInfo | None = None
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a finished batch: its key and either its vector or its error."""

    key: str
    values: list[float] | None = None
    error: ErrorInfo | None = None


class BatchProvider(abc.ABC):
    """An asynchronous batch embedding service. Errors are `TransientError` or `PermanentError`."""

    @abc.abstractmethod
    def upload_requests(self, chunks: Iterable[bytes], size: int, display_name: str) -> str:
        """Upload a JSONL file of `{"key", "request"}` lines of exactly `size` bytes; returns its name."""

    @abc.abstractmethod
    def create_batch(
        self,
        *,
        model: str,
        display_name: str,
        priority: int,
        requests: list[dict] | None = None,
        file_name: str | None = None,
    ) -> ProviderBatch:
        """Create a batch from inline `requests` (`{"key", "request"}` dicts) or an uploaded file.

        Not idempotent: two calls make two batches. Callers record their intent first and recover with
        `find_batch` (see `shared.services.submit`).
        """

    @abc.abstractmethod
    def find_batch(self, display_name_suffix: str, created_after: datetime) -> ProviderBatch | None:
        """The batch whose display name ends with `display_name_suffix`, created after the given time."""

    @abc.abstractmethod
    def get_batch(self, name: str) -> ProviderBatch:
        """Current state and counts."""

    @abc.abstractmethod
    def cancel_batch(self, name: str) -> None:
        """Ask the provider to stop the batch (best effort; a finished batch is left as it is)."""

    @abc.abstractmethod
    def iter_results(self, name: str) -> Iterator[ItemResult]:
        """Stream every item result of a SUCCEEDED batch, in the provider's order (not the input's)."""
