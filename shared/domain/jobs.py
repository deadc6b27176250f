"""Jobs, their shards, and the one table of states and transitions.

A job is one landed object (bucket, name, generation). Its records are cut into shards; each shard is
one provider batch at a time (a retried shard gets a new batch, a follow-up shard carries the items that
failed in an earlier one). The job document in the repository is the single source of truth that every
function reads and writes under a lease.

Job states::

    SUBMITTING --> RUNNING --> COMPLETING --> SUCCEEDED | PARTIALLY_SUCCEEDED | FAILED
        |             |  ^          |
        |             |  +----------+  (failed items resubmitted as a follow-up shard)
        +-------------+-------------+--> FAILED | CANCELLED

Shard states::

    STAGED --> CREATING --> PENDING --> RUNNING --> SUCCEEDED --> WRITTEN
                  ^            |           |
                  |            +-----------+--> FAILED | EXPIRED | CANCELLED
                  +-------------------------------+   (retried while attempts remain,
                                                        else ABANDONED: its items count as failed)
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from shared.domain.options import JobOptions

__all__ = [
    "ACTIVE_JOB_STATES",
    "TERMINAL_JOB_STATES",
    "Counts",
    "ErrorInfo",
    "FileRef",
    "InvalidTransition",
    "Job",
    "JobState",
    "Shard",
    "ShardMode",
    "ShardOutput",
    "ShardState",
    "SourceObject",
    "job_id_for",
]


class JobState(StrEnum):
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_JOB_STATES = frozenset({JobState.SUBMITTING, JobState.RUNNING, JobState.COMPLETING})
TERMINAL_JOB_STATES = frozenset(set(JobState) - ACTIVE_JOB_STATES)

#: Every allowed move. Staying in a state is always allowed (idempotent re-writes).
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.COMPLETING, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETING: frozenset({
        JobState.RUNNING, JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED,
        JobState.FAILED, JobState.CANCELLED,
    }),
    JobState.SUCCEEDED: frozenset(),
    JobState.PARTIALLY_SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class ShardState(StrEnum):
    STAGED = "STAGED"  # requests written to staging; no batch created
    CREATING = "CREATING"  # a create call may have been made: recover the batch by its display name
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # results ready at the provider
    WRITTEN = "WRITTEN"  # results written to the output bucket
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    ABANDONED = "ABANDONED"  # no attempts left: every item of the shard counts as failed


#: States in which the provider still works on the shard's batch.
SHARD_IN_FLIGHT = frozenset({ShardState.PENDING, ShardState.RUNNING})
#: States in which the provider ended the batch without results.
SHARD_PROVIDER_FAILED = frozenset({ShardState.FAILED, ShardState.EXPIRED, ShardState.CANCELLED})


class InvalidTransition(RuntimeError):
    """A state change the state table does not allow: a bug, never an input problem."""


class ShardMode(StrEnum):
    INLINE = "inline"  # requests sent in the create call
    FILE = "file"  # requests uploaded through the Files API


class ErrorInfo(BaseModel):
    code: str
    message: str
    at: datetime | None = None


class FileRef(BaseModel):
    uri: str
    size: int
    crc32c: str | None = None
    md5: str | None = None
    rows: int | None = None


class SourceObject(BaseModel):
    """The landed object, as its finalize event describes it."""

    bucket: str
    name: str
    generation: str
    size: int = 0
    content_type: str | None = None
    content_encoding: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class Counts(BaseModel):
    """Item counts. `total` counts records accepted from the input; input problems are counted apart."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    input_problems: int = 0

    @property
    def pending(self) -> int:
        return max(self.total - self.succeeded - self.failed, 0)

    def to_dict(self) -> dict[str, int]:
        """The counts with `pending`, as operators and the manifest see them (not stored: it is derived)."""
        return {**self.model_dump(), "pending": self.pending}


class ShardOutput(BaseModel):
    embeddings: FileRef
    parquet: FileRef
    failed_items_uri: str | None = None
    succeeded: int = 0
    failed: int = 0


class Shard(BaseModel):
    index: int
    mode: ShardMode
    request_count: int
    request_bytes: int
    estimated_tokens: int = 0
    requests_uri: str  # staging JSONL in the Files API input format: {"key", "request"}
    records_uri: str  # staging JSONL: {"key", "id", "title"?, "metadata"?}
    parent: int | None = None  # a follow-up shard carries failed items of this shard
    item_attempt: int = 1  # 1 for input shards, n for the n-th try of their items
    state: ShardState = ShardState.STAGED
    batch_attempts: int = 0  # batches created for this shard
    batch_name: str | None = None
    input_file: str | None = None  # Files API name of the uploaded requests
    create_started_at: datetime | None = None
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    provider_error: ErrorInfo | None = None
    output: ShardOutput | None = None

    def abandon(self, error: ErrorInfo) -> None:
        """Give up on the shard: no results of it will be written, so every item counts as failed."""
        self.state = ShardState.ABANDONED
        self.provider_error = error
        self.succeeded = self.failed = self.pending = 0

    def tag(self, job_id: str) -> str:
        """The suffix of the batch's display name that finds it again after a crash."""
        return f"[{job_id}/s{self.index}a{self.batch_attempts}]"


class Estimate(BaseModel):
    input_tokens: int = 0
    cost_batch_usd: float = 0.0
    cost_interactive_usd: float = 0.0


class InputProblems(BaseModel):
    count: int = 0
    sample: list[dict[str, Any]] = Field(default_factory=list)  # the first few, with line numbers
    uri: str | None = None  # every problem, one JSON line each


class JobOutput(BaseModel):
    prefix: str  # gs://bucket/path/ holding every file of the job
    manifest: str | None = None
    embeddings: list[str] = Field(default_factory=list)
    parquet: list[str] = Field(default_factory=list)
    errors: str | None = None
    input_errors: str | None = None


class Job(BaseModel):
    """The job document. Field names are what operators see in Firestore."""

    model_config = ConfigDict(validate_assignment=False)

    job_id: str
    source: SourceObject
    options: JobOptions | None = None  # None until the metadata has been read and validated
    state: JobState = JobState.SUBMITTING
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    deadline_at: datetime | None = None
    next_poll_at: datetime | None = None  # set while active: the poller's due-jobs query reads it
    staged: bool = False
    shards: list[Shard] = Field(default_factory=list)
    counts: Counts = Field(default_factory=Counts)
    estimate: Estimate = Field(default_factory=Estimate)
    input_problems: InputProblems = Field(default_factory=InputProblems)
    progress_percentage: float = 0.0
    success_rate: float | None = None
    poll_failures: int = 0
    last_error: ErrorInfo | None = None
    error: ErrorInfo | None = None
    output: JobOutput | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    event_id: str | None = None
    event_published_at: datetime | None = None
    # The stored version this copy was read at, set by the repository (not a field of the document):
    # `JobRepository.replace_if_unchanged` writes only over that version.
    _revision: Any = PrivateAttr(default=None)

    # -- states -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_JOB_STATES

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    def move_to(self, state: JobState, now: datetime) -> None:
        """Change state through the transition table; raises `InvalidTransition` otherwise."""
        if state != self.state and state not in JOB_TRANSITIONS[self.state]:
            raise InvalidTransition(f"job {self.job_id}: {self.state} -> {state} is not allowed")
        self.state = state
        self.updated_at = now
        if state in TERMINAL_JOB_STATES:
            self.completed_at = self.completed_at or now
            # Due at once until its event is published: the poller publishes it if the ender crashed.
            self.next_poll_at = now

    # -- leases -------------------------------------------------------------------------------

    def leased_by_other(self, owner: str, now: datetime) -> bool:
        return bool(self.lease_owner and self.lease_owner != owner and self.lease_until and self.lease_until > now)

    # -- progress -----------------------------------------------------------------------------

    @property
    def followed_up(self) -> set[int]:
        """Indices of the shards whose failed items a follow-up shard carries on."""
        return {s.parent for s in self.shards if s.parent is not None}

    def refresh_counts(self) -> None:
        """Derive counts, progress and success rate from the shards.

        An item counts once, at its latest try: a follow-up shard's items are the failed items of its
        parent, so the parent's failures are only final when no follow-up carries them.
        """
        succeeded = failed = 0
        retried_from = self.followed_up
        for shard in self.shards:
            succeeded += shard.succeeded
            if shard.index not in retried_from:
                failed += shard.failed
            if shard.state == ShardState.ABANDONED:
                failed += shard.request_count
        self.counts.succeeded = succeeded
        self.counts.failed = failed
        total = self.counts.total
        done = succeeded + failed
        self.progress_percentage = round(100.0 * done / total, 2) if total else 0.0
        self.success_rate = round(100.0 * succeeded / done, 2) if done else None


def job_id_for(bucket: str, name: str, generation: str | int) -> str:
    """The one job id of an object generation: the same event always names the same job."""
    digest = hashlib.sha256(f"{bucket}\n{name}\n{generation}".encode()).hexdigest()
    return f"job-{digest[:20]}"
