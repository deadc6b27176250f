"""The ports: what the use cases need from the outside world, and nothing more.

Adapters (`shared.adapters`) implement them over Firestore, Cloud Storage, Pub/Sub and the providers; unit
tests implement them in memory (`tests/fakes.py`). Objects are addressed by `gs://bucket/name` URIs. Every
method raises only the pipeline's own errors (`shared.errors`): each adapter maps its vendor's errors in one
place.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO, TypeVar

from shared.domain.capabilities import Capabilities
from shared.domain.jobs import ErrorInfo, Job, JobState, Shard
from shared.domain.ledger import Ledger
from shared.domain.options import JobOptions

__all__ = [
    "BatchProvider",
    "BlobInfo",
    "BlobStore",
    "EmbeddingCache",
    "ItemResult",
    "JobRepository",
    "JobTx",
    "LedgerRepository",
    "MessagePublisher",
    "ProviderBatch",
    "ProviderState",
    "StagedItem",
]

T = TypeVar("T")


# -- jobs and their shards ------------------------------------------------------------------------------


@dataclass
class JobTx:
    """What one transaction over a job sees: the job, the shards it asked for (by index; None when absent),
    and the shards it adds. Changes made to them are written together, or not at all."""

    job: Job
    shards: dict[int, Shard | None] = field(default_factory=dict)
    added: list[Shard] = field(default_factory=list)


class JobRepository(abc.ABC):
    # -- jobs ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def create(self, job: Job) -> tuple[Job, bool]:
        """Store `job` unless a job with its id exists. Returns the stored job and whether it was created.

        Atomic: of any number of concurrent calls for one id, exactly one creates.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abc.abstractmethod
    def update(self, job_id: str, change: Callable[[JobTx], T], *, shards: Iterable[int] = ()) -> tuple[JobTx, T]:
        """In one transaction: read the job and the shards named, apply `change` (which mutates them and may
        add shards to `tx.added`), write what changed.

        `change` may run several times under contention, so it must have no other effect. An exception
        from `change` aborts the whole transaction and propagates. Raises `NotFound` when there is no such
        job, `TransientError` when the store is busy or unavailable, `PermanentError` for a document it
        cannot store or read (over the size limit, corrupt).
        """

    @abc.abstractmethod
    def replace_if_unchanged(self, job: Job) -> bool:
        """Write `job` whole, with no read, only if its document has not been written since `job` was read
        (its revision). False, writing nothing, when another writer came first."""

    @abc.abstractmethod
    def due(self, now: datetime, limit: int) -> list[Job]:
        """Active (or unannounced) jobs whose `next_poll_at` has passed, the longest overdue first."""

    @abc.abstractmethod
    def list(
        self, *, state: JobState | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Jobs, newest first, optionally in one state. Returns a page and the token of the next one."""

    @abc.abstractmethod
    def exist(self, job_ids: list[str]) -> set[str]:
        """Which of `job_ids` have a job document (read in batches)."""

    # -- shards -------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_shard(self, job_id: str, index: int) -> Shard | None:
        """The shard, or None."""

    @abc.abstractmethod
    def shards(self, job_id: str, *, states: Iterable[str] | None = None, limit: int | None = None) -> Iterator[Shard]:
        """The job's shards in index order, optionally only those in `states`, at most `limit`; streamed."""

    @abc.abstractmethod
    def update_shard(self, job_id: str, index: int, change: Callable[[Shard], T]) -> tuple[Shard, T]:
        """Read the shard, apply `change`, write it back if it changed, atomically (as `update`)."""

    @abc.abstractmethod
    def replace_shard_if_unchanged(self, shard: Shard) -> bool:
        """Write `shard` whole, with no read, only if its document has not been written since `shard` was
        read (its revision). False, writing nothing, when another writer came first."""

    @abc.abstractmethod
    def due_shards(self, now: datetime, limit: int) -> list[Shard]:
        """Shards of any job whose `next_poll_at` has passed, the longest overdue first."""

    @abc.abstractmethod
    def waiting_shards(self, ledger: str, limit: int) -> list[Shard]:
        """The head of one ledger's queue: STAGED shards, by priority (high first), then `fair_key`, then
        age, then job and index."""

    @abc.abstractmethod
    def queue_ahead(self, ledger: str, priority: int, fair_key: float) -> tuple[int, int]:
        """How many STAGED shards of the ledger come before a shard of this priority and fair key, and their
        estimated tokens (aggregate queries: no scan)."""

    @abc.abstractmethod
    def shard_of_batch(self, batch_name: str) -> Shard | None:
        """The shard whose current batch this is, or None."""

    # -- the pipeline's own bookkeeping (small documents: the reconciler's cursor) ------------------

    @abc.abstractmethod
    def marker(self, name: str) -> dict:
        """A small named record ({} when absent)."""

    @abc.abstractmethod
    def set_marker(self, name: str, value: dict) -> None:
        """Replace a named record."""


# -- the capacity ledgers -------------------------------------------------------------------------------


class LedgerRepository(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> Ledger | None:
        """The ledger, or None before its first use."""

    @abc.abstractmethod
    def update(self, key: str, change: Callable[[Ledger], T]) -> tuple[Ledger, T]:
        """Read the ledger (a new empty one if absent), apply `change`, write it back, atomically (as
        `JobRepository.update`). `change` may run more than once (on fresh reads); when this returns, the
        ledger holds exactly one application of it, even if the answer to a write was lost; when it
        raises, none or one (a write whose outcome could not be read back)."""

    @abc.abstractmethod
    def list_keys(self) -> list[str]:
        """Every ledger's key (one per provider and model used)."""


# -- the embeddings cache -------------------------------------------------------------------------------


class EmbeddingCache(abc.ABC):
    """Embeddings by content: a key of everything that determines a vector (provider, model, task type,
    dimensions, title, text) -> that vector, L2-normalised, as float32 bytes. Entries expire on their own."""

    @abc.abstractmethod
    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """The vectors of the keys found (read in batches)."""

    @abc.abstractmethod
    def put_many(self, entries: dict[str, bytes]) -> None:
        """Store vectors by key (in batches); each entry is written whole or not at all."""


# -- objects --------------------------------------------------------------------------------------------


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
    updated: datetime | None = None


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def stat(self, uri: str) -> BlobInfo | None:
        """The object's metadata, or None when it does not exist."""

    @abc.abstractmethod
    def open_read(self, uri: str, generation: str | None = None, offset: int = 0) -> AbstractContextManager[BinaryIO]:
        """A streaming reader of the object's stored bytes (no transcoding) from byte `offset`.
        Raises `NotFound`."""

    @abc.abstractmethod
    def open_write(self, uri: str, content_type: str) -> AbstractContextManager[BinaryIO]:
        """A streaming writer. The object appears whole when the block exits cleanly, and not at all
        (or unchanged) when it exits with an exception."""

    @abc.abstractmethod
    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        """Write a small object at once."""

    @abc.abstractmethod
    def list(self, prefix_uri: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[BlobInfo]:
        """Objects whose URI starts with `prefix_uri`, in name order, after the name `start_after`."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    @abc.abstractmethod
    def compose(self, sources: list[str], dest: str, content_type: str) -> BlobInfo:
        """Write `dest` as the concatenation of `sources` (same bucket), without downloading them."""


# -- messages -------------------------------------------------------------------------------------------


class MessagePublisher(abc.ABC):
    @abc.abstractmethod
    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        """Publish and wait for the broker's acknowledgement; returns the message id."""


# -- the embedding provider -----------------------------------------------------------------------------


class ProviderState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


PROVIDER_TERMINAL = frozenset({ProviderState.SUCCEEDED, ProviderState.FAILED, ProviderState.CANCELLED,
                               ProviderState.EXPIRED})


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

    @property
    def terminal(self) -> bool:
        return self.state in PROVIDER_TERMINAL


@dataclass(frozen=True, slots=True)
class StagedItem:
    """One record as staging keeps it, provider-neutral: each provider encodes its own request line."""

    key: str
    text: str
    title: str | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a finished batch: its key and either its vector or its error."""

    key: str
    values: list[float] | None = None
    error: ErrorInfo | None = None
    tokens: int | None = None  # real tokens, where the provider reports them
    vector: bytes | None = None  # instead of `values`: float32 bytes, already L2-normalised (from the cache)


class BatchProvider(abc.ABC):
    """An asynchronous batch embedding service.

    Errors: `CapacityExhausted` when a create or upload is refused for a quota (nothing was made),
    `TransientError` when a retry may help (the call may or may not have taken effect), `NotFound`,
    `PermanentError`.
    """

    name: str

    @abc.abstractmethod
    def capabilities(self, model: str) -> Capabilities:
        """What the provider serves for `model`; raises `PermanentError` for a model it does not serve."""

    @abc.abstractmethod
    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions, display_name: str) -> tuple[str, int]:
        """Encode the items as this provider's batch input and store it where its batches read it.
        `items` opens the sequence afresh on each call (an upload may need two passes). Returns the
        input's reference and its size in bytes."""

    @abc.abstractmethod
    def create_batch(self, *, options: JobOptions, input_ref: str, display_name: str, tag: str) -> ProviderBatch:
        """Create a batch from a prepared input. One call, no retry: not idempotent, two calls make two
        batches. `tag` (also at the end of `display_name`) finds the batch again (`find_batches`)."""

    @abc.abstractmethod
    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        """Every batch carrying `tag` created after the given time, whatever order the provider lists in."""

    @abc.abstractmethod
    def get_batch(self, name: str) -> ProviderBatch:
        """Current state and counts."""

    @abc.abstractmethod
    def cancel_batch(self, name: str) -> None:
        """Ask the provider to stop the batch (best effort; a finished batch is left as it is)."""

    @abc.abstractmethod
    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        """Stream every item result of a SUCCEEDED batch, in the provider's order (not the input's), the
        same order on every read, from the `start`-th on: those before it are skipped without being
        parsed (a continuation goes on where the shard before it stopped)."""

    @abc.abstractmethod
    def delete_input(self, input_ref: str) -> None:
        """Delete a prepared input; a missing one is not an error."""

    @abc.abstractmethod
    def delete_results(self, name: str) -> bool:
        """Delete a batch's stored results. False when the provider keeps them (they expire on their own)."""

    @abc.abstractmethod
    def embed_query(self, text: str, options: JobOptions) -> list[float]:
        """One query embedded at the provider's interactive endpoint, as a retrieval query for the same model
        and dimensions as a job's passages."""

    def result_bytes(self, items: int, dimensions: int) -> int:
        """About how much storage a batch's results of `items` vectors take at the provider."""
        return items * (dimensions * 12 + 64)
