"""Jobs and their shards: two kinds of documents, each with one table of states and transitions.

A job is one landed object (bucket, name, generation). Its records are staged into shards; each shard is
one provider batch at a time (a retried shard gets a new batch; a follow-up shard carries the items that
failed in an earlier one; a split shard is replaced by two halves). Shards are documents of their own, so a
job's document stays small whatever its size, and shards move independently: admitted when capacity frees,
polled, written in parallel.

Job states::

    SUBMITTING --> RUNNING --> COMPLETING --> SUCCEEDED | PARTIALLY_SUCCEEDED | FAILED
        |             |             |
        +-------------+-------------+--> FAILED | CANCELLED

SUBMITTING: the input is being staged (its shards may already run). RUNNING: staged, shards open.
COMPLETING: every shard is final; the job's files and event are being written.

Shard states::

    STAGED --> CREATING --> PENDING --> RUNNING --> SUCCEEDED --> WRITTEN
      ^  |        |  |         |           |
      |  |        |  +---------+-----------+--> FAILED | EXPIRED | CANCELLED --> STAGED (retry) | ABANDONED
      |  |        +--> STAGED (no capacity: the create was refused, or was never made)
      |  +--> SPLIT (too large for the provider's real cap: replaced by two smaller shards)
      +------ any open state --> ABANDONED (no attempts left, deadline, cancel: its items count as failed)

WRITTEN, ABANDONED and SPLIT are final. Every item of a job is accounted for exactly once: embedded in a
WRITTEN shard, failed in a final shard (listed in errors.jsonl), carried by a follow-up or split child, or
an input problem.

Counters on the job (`shard_count`, `open_shards`, `counts.succeeded`, `counts.failed`) change only inside
a transaction that also moves the shard concerned (`Job.allocate_shard`, `Job.close_shard`), so they are
exact under any interleaving of workers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from shared.domain.options import JobOptions

__all__ = [
    "ACTIVE_JOB_STATES",
    "COUNTER_FIELDS",
    "FINAL_SHARD_STATES",
    "JOB_TRANSITIONS",
    "SHARD_HOLDS_TOKENS",
    "SHARD_IN_FLIGHT",
    "SHARD_PROVIDER_ENDED",
    "SHARD_TRANSITIONS",
    "TERMINAL_JOB_STATES",
    "Counts",
    "ErrorInfo",
    "FileRef",
    "InputProblems",
    "InvalidTransition",
    "Job",
    "JobOutput",
    "JobState",
    "Shard",
    "ShardOrigin",
    "ShardOutput",
    "ShardState",
    "SourceObject",
    "Staging",
    "bounded",
    "job_id_for",
]

#: Longest user-derived string kept on a document (messages, ids in samples); longer ones are cut.
MAX_MESSAGE_CHARS = 1000
MAX_SAMPLE_CHARS = 300
MAX_SOURCE_METADATA_BYTES = 8192  # Cloud Storage's own limit on an object's custom metadata


def bounded(text: str | None, limit: int = MAX_MESSAGE_CHARS) -> str | None:
    """`text` cut to `limit` characters (marked with an ellipsis), so no user string grows a document."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


class InvalidTransition(RuntimeError):
    """A state change the state table does not allow: a bug, never an input problem."""


# -- jobs -----------------------------------------------------------------------------------------------


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
    JobState.SUBMITTING: frozenset({JobState.RUNNING, JobState.COMPLETING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.COMPLETING, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETING: frozenset({
        JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
    }),
    JobState.SUCCEEDED: frozenset(),
    JobState.PARTIALLY_SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class ErrorInfo(BaseModel):
    code: str
    message: str
    at: datetime | None = None

    @field_validator("code", "message")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return bounded(value)


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

    @field_validator("metadata")
    @classmethod
    def _within_storage_limit(cls, metadata: dict[str, str]) -> dict[str, str]:
        """Keep what Cloud Storage itself allows (8 KiB): an event from elsewhere cannot grow the job."""
        kept: dict[str, str] = {}
        size = 0
        for key, value in metadata.items():
            size += len(key.encode()) + len(value.encode())
            if size > MAX_SOURCE_METADATA_BYTES:
                break
            kept[key] = value
        return kept

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class Counts(BaseModel):
    """Item counts. `total` counts records accepted from the input; input problems are counted apart.
    `reused` of the succeeded items came from the embeddings cache instead of the provider."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    input_problems: int = 0
    reused: int = 0

    @property
    def pending(self) -> int:
        return max(self.total - self.succeeded - self.failed, 0)

    def to_dict(self) -> dict[str, int]:
        """The counts with `pending`, as operators and the manifest see them (not stored: it is derived)."""
        return {**self.model_dump(), "pending": self.pending}


class Estimate(BaseModel):
    input_tokens: int = 0  # estimated tokens of every accepted record (those sent and those reused)
    reported_tokens: int | None = None  # real tokens, where the provider reports them
    cost_batch_usd: float = 0.0  # of the tokens sent to the provider
    cost_interactive_usd: float = 0.0  # what the same tokens would cost at the interactive price
    reused_tokens: int = 0  # tokens of the items taken from the cache (not sent)
    saved_usd: float = 0.0  # their batch price
    cache_reads: int = 0  # cache lookups (documents read)
    cache_writes: int = 0  # cache entries written
    cache_usd: float = 0.0  # the cache's own cost for this job (reads and writes)


class InputProblems(BaseModel):
    count: int = 0
    sample: list[dict[str, Any]] = Field(default_factory=list)  # the first few, with line numbers
    uri: str | None = None  # every problem, one JSON line each

    SAMPLE_SIZE: ClassVar[int] = 20

    def add_to_sample(self, entry: dict[str, Any]) -> None:
        """Keep `entry` among the first few, its strings bounded."""
        if len(self.sample) < self.SAMPLE_SIZE:
            self.sample.append({k: bounded(v, MAX_SAMPLE_CHARS) if isinstance(v, str) else v for k, v in entry.items()})


class ChangeCounts(BaseModel):
    """Ids added, changed and removed against the previous complete generation of the same source."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    previous_manifest: str | None = None  # None: the first generation (every id added)
    uri: str | None = None  # changes.jsonl


class JobOutput(BaseModel):
    prefix: str  # gs://bucket/path/ holding every file of the job
    manifest: str | None = None  # lists every file; the event lists them too
    errors: str | None = None
    input_errors: str | None = None
    files: int = 0  # embeddings files written (one JSONL and one Parquet per written shard)
    index: str | None = None  # every embedded id with its content hash
    changes: ChangeCounts | None = None


class Staging(BaseModel):
    """How far staging has read the input: where the next delivery resumes (never re-staging a shard)."""

    position: dict[str, Any] | None = None  # the reader's position (shared.ingest.ReadPosition) at the checkpoint
    carry_uri: str | None = None  # the record read last before the checkpoint: the next shard's first
    seen_ids_uri: str | None = None  # the duplicate-id set as of the first `seen_ids_segments` segments (+ carry)
    seen_ids_segments: int = 0
    next_key: int = 0  # the key of the next record (keys are record numbers in the file)
    problems: int = 0  # input problems met before the position
    segments: int = 0  # checkpoints made: input shards, and stretches of problems with no record
    tokens: int = 0
    done: bool = False
    held: bool = False  # its shards are staged out of the queue (on_bad_record=fail) until the file reads clean
    opened: bool = False  # ...and once it did, all of them were put in the queue
    fatal: dict[str, Any] | None = None  # the problem that ended the reading early
    invocations: int = 0  # deliveries that staged a part of the input
    splitter_version: int = 1  # how documents were cut into passages (shared.ingest.SPLITTER_VERSION)
    fair_start: float = 0.0  # the ledger's virtual time when staging began: the job's place in the queue


# Fields changed only by transactions that move a shard (see the module docstring); a leased worker's
# `save` never writes them from its own copy.
COUNTER_FIELDS = ("shard_count", "open_shards", "counts.succeeded", "counts.failed", "counts.reused",
                  "estimate.reported_tokens", "estimate.cache_writes")


class Job(BaseModel):
    """The job document. Field names are what operators see in Firestore. Its size is bounded whatever the
    input: user strings are cut (`bounded`), problems keep a sample, and shards are documents of their own."""

    model_config = ConfigDict(validate_assignment=False)

    job_id: str
    source: SourceObject
    options: JobOptions | None = None  # None until the metadata has been read and validated
    state: JobState = JobState.SUBMITTING
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None  # staging done
    completed_at: datetime | None = None
    deadline_at: datetime | None = None
    next_poll_at: datetime | None = None  # set while the job needs the poller: its due-jobs query reads it
    ledger: str | None = None  # the capacity ledger its shards are admitted through
    staging: Staging = Field(default_factory=Staging)
    shard_count: int = 0  # shard indices allocated (input, follow-up and split shards)
    open_shards: int = 0  # shards not yet final
    counts: Counts = Field(default_factory=Counts)
    estimate: Estimate = Field(default_factory=Estimate)
    input_problems: InputProblems = Field(default_factory=InputProblems)
    first_admitted_at: datetime | None = None  # when its first shard got capacity: the wait is before it
    poll_failures: int = 0
    last_error: ErrorInfo | None = None
    error: ErrorInfo | None = None
    output: JobOutput | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    failing: ErrorInfo | None = None  # a failed submission being carried out: shards stopped, then FAILED
    event_id: str | None = None
    event_published_at: datetime | None = None
    # The stored version this copy was read at, set by the repository (not a field of the document), and
    # the document as this worker last read or saved it (`shared.domain.changes`).
    _revision: Any = PrivateAttr(default=None)
    _base: Any = PrivateAttr(default=None)

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

    @property
    def stopping(self) -> bool:
        """Its work is being stopped (a cancel request, a failed submission): no new batch, no new write."""
        return self.cancel_requested or self.failing is not None

    def past_deadline(self, now: datetime) -> bool:
        return self.deadline_at is not None and now >= self.deadline_at

    # -- leases -------------------------------------------------------------------------------

    def leased_by_other(self, owner: str, now: datetime) -> bool:
        return bool(self.lease_owner and self.lease_owner != owner and self.lease_until and self.lease_until > now)

    # -- shards (inside a transaction that writes the shard too) -------------------------------

    def allocate_shard(self) -> int:
        """The index of a new shard, counted open."""
        index = self.shard_count
        self.shard_count += 1
        self.open_shards += 1
        return index

    def close_shard(self, shard: Shard, now: datetime, *, carried: int = 0) -> bool:
        """Count a shard that just became final. `carried`: its failed items a follow-up shard carries on
        (not final yet). Returns True when that leaves nothing open in a staged job: it is COMPLETING."""
        if shard.state == ShardState.WRITTEN:
            self.counts.succeeded += shard.succeeded
            self.counts.failed += shard.failed - carried
            self.counts.reused += shard.reused
        elif shard.state == ShardState.ABANDONED:
            self.counts.failed += shard.request_count
        elif shard.state != ShardState.SPLIT:
            raise InvalidTransition(f"shard {shard.index} of {self.job_id} is {shard.state}, not final")
        self.open_shards -= 1
        if shard.reported_tokens is not None:
            self.estimate.reported_tokens = (self.estimate.reported_tokens or 0) + shard.reported_tokens
        self.estimate.cache_writes += shard.cache_writes
        return self.complete_if_done(now)

    def complete_if_done(self, now: datetime) -> bool:
        """COMPLETING when staged and no shard is open; True when this call made it so."""
        if self.active and self.state != JobState.COMPLETING and self.staging.done and self.open_shards == 0:
            self.move_to(JobState.COMPLETING, now)
            return True
        return False

    # -- progress -----------------------------------------------------------------------------

    def progress(self, in_flight_done: int = 0) -> float:
        """Percent of items with a final outcome, plus `in_flight_done` items done in running batches."""
        total = self.counts.total
        done = min(self.counts.succeeded + self.counts.failed + in_flight_done, total)
        return round(100.0 * done / total, 2) if total else 0.0

    @property
    def success_rate(self) -> float | None:
        done = self.counts.succeeded + self.counts.failed
        return round(100.0 * self.counts.succeeded / done, 2) if done else None


def job_id_for(bucket: str, name: str, generation: str | int) -> str:
    """The one job id of an object generation: the same event always names the same job."""
    digest = hashlib.sha256(f"{bucket}\n{name}\n{generation}".encode()).hexdigest()
    return f"job-{digest[:20]}"


# -- shards ---------------------------------------------------------------------------------------------


class ShardState(StrEnum):
    STAGED = "STAGED"  # records staged; waiting for capacity
    CREATING = "CREATING"  # capacity reserved; a create call may have been made: recover by tag
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # results ready at the provider
    WRITTEN = "WRITTEN"  # results written to the output bucket (final)
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    ABANDONED = "ABANDONED"  # final: no results will be written, every item counts as failed
    SPLIT = "SPLIT"  # final: replaced by two smaller shards that carry its items


#: States in which the provider works on the shard's batch.
SHARD_IN_FLIGHT = frozenset({ShardState.PENDING, ShardState.RUNNING})
#: States in which the provider ended the batch without results.
SHARD_PROVIDER_ENDED = frozenset({ShardState.FAILED, ShardState.EXPIRED, ShardState.CANCELLED})
#: States that hold enqueued tokens in the capacity ledger (a batch exists or may exist).
SHARD_HOLDS_TOKENS = frozenset({ShardState.CREATING, ShardState.PENDING, ShardState.RUNNING})
FINAL_SHARD_STATES = frozenset({ShardState.WRITTEN, ShardState.ABANDONED, ShardState.SPLIT})
_ENDED_BY_PROVIDER = SHARD_PROVIDER_ENDED | {ShardState.SUCCEEDED}

SHARD_TRANSITIONS: dict[ShardState, frozenset[ShardState]] = {
    ShardState.STAGED: frozenset({ShardState.CREATING, ShardState.SPLIT, ShardState.ABANDONED}),
    ShardState.CREATING: frozenset({ShardState.STAGED, ShardState.SPLIT, ShardState.ABANDONED}
                                   | SHARD_IN_FLIGHT | _ENDED_BY_PROVIDER),
    ShardState.PENDING: frozenset({ShardState.RUNNING, ShardState.ABANDONED} | _ENDED_BY_PROVIDER),
    ShardState.RUNNING: frozenset({ShardState.ABANDONED} | _ENDED_BY_PROVIDER),
    ShardState.SUCCEEDED: frozenset({ShardState.WRITTEN, ShardState.ABANDONED}),
    ShardState.FAILED: frozenset({ShardState.STAGED, ShardState.ABANDONED}),
    ShardState.EXPIRED: frozenset({ShardState.STAGED, ShardState.ABANDONED}),
    ShardState.CANCELLED: frozenset({ShardState.STAGED, ShardState.ABANDONED}),
    ShardState.WRITTEN: frozenset(),
    ShardState.ABANDONED: frozenset(),
    ShardState.SPLIT: frozenset(),
}


class ShardOrigin(StrEnum):
    INPUT = "input"  # cut from the input by staging
    CACHE = "cache"  # items of the input whose embeddings were found in the cache: written, never sent
    FOLLOW_UP = "follow_up"  # the failed items of `parent`, tried again
    SPLIT = "split"  # half of `parent`, which the provider's cap refused whole


class ShardOutput(BaseModel):
    embeddings: FileRef
    parquet: FileRef
    failed_items_uri: str | None = None
    succeeded: int = 0
    failed: int = 0
    reported_tokens: int | None = None
    cache_writes: int = 0


class Shard(BaseModel):
    """One shard's document. Its records file holds neutral records (`{"key", "id", "text", "title"?,
    "metadata"?}`), which each provider encodes into its own request lines."""

    model_config = ConfigDict(validate_assignment=False)

    job_id: str
    index: int
    state: ShardState = ShardState.STAGED
    origin: ShardOrigin = ShardOrigin.INPUT
    parent: int | None = None
    item_attempt: int = 1  # 1 for input shards, n for the n-th try of their items
    records_uri: str
    request_count: int
    request_bytes: int = 0  # about the size of the provider's input for it
    record_bytes: int = 0  # ids, titles and metadata: what `complete` holds in memory while writing it
    file_bytes: int = 0  # about what its input and results take of the provider's file storage
    estimated_tokens: int = 0
    reported_tokens: int | None = None  # real tokens of its items, where the provider reports them
    provider: str = ""  # the provider its batches go to (the job's)
    # Admission: the queue is ordered by priority (high first), then fair_key (low first), then age. A shard
    # with no ledger is held out of the queue (a strict file's shards, until the whole file read clean).
    ledger: str = ""
    priority: int = 0
    fair_key: float = 0.0
    reservation: str | None = None  # the ledger hold it owns (tokens while a batch may exist, files until written)
    batch_attempts: int = 1  # the attempt its current (or next) batch is: 1, then 2 after a retry, ...
    batch_name: str | None = None
    input_ref: str | None = None  # the provider's handle of the uploaded input (file name, gs:// URI)
    create_started_at: datetime | None = None
    uncertain_create: bool = False  # a create's answer was lost: look for a stray second batch at the end
    # Batches of this shard a worker made after losing it and could not cancel: the next poll of the shard
    # (due at once, final or not) or the pass that stops its job cancels them.
    strays: list[str] = Field(default_factory=list)
    # Tags of creates whose answers a worker that had lost the shard never got: any batch of the tag the
    # shard did not adopt is cancelled the same way.
    stray_tags: list[str] = Field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    reused: int = 0  # items taken from the embeddings cache
    cache_writes: int = 0  # cache entries its results gave
    followed_up: bool = False  # its failed items are carried on by a follow-up shard
    # A continuation goes on writing the results of shard `continues`'s batch where the shard before it
    # stopped (its `write_rows` written): it skips the first `results_from` results and the records keys
    # listed in `written_keys_uri`.
    continues: int | None = None
    results_from: int = 0
    written_keys_uri: str | None = None
    # At most this many items per `complete` invocation: fixed when the shard is made (and copied to its
    # continuations, follow-ups and halves) so every worker of it stops at the same place, whatever its
    # own settings say during a deploy. None (shards made before it existed): the worker's setting.
    write_rows: int | None = None
    provider_error: ErrorInfo | None = None
    output: ShardOutput | None = None
    created_at: datetime
    updated_at: datetime
    next_poll_at: datetime | None = None  # due while a batch runs, or while a step may have been lost
    lease_owner: str | None = None
    lease_until: datetime | None = None
    _revision: Any = PrivateAttr(default=None)
    _base: Any = PrivateAttr(default=None)

    @property
    def final(self) -> bool:
        return self.state in FINAL_SHARD_STATES

    @property
    def doc_id(self) -> str:
        return shard_doc_id(self.index)

    def move_to(self, state: ShardState, now: datetime) -> None:
        """Change state through the transition table; raises `InvalidTransition` otherwise."""
        if state != self.state and state not in SHARD_TRANSITIONS[self.state]:
            raise InvalidTransition(f"shard {self.job_id}/{self.index}: {self.state} -> {state} is not allowed")
        self.state = state
        self.updated_at = now
        if state in FINAL_SHARD_STATES:
            self.next_poll_at = None

    def abandon(self, error: ErrorInfo, now: datetime) -> None:
        """Give up on the shard: no results of it will be written, so every item counts as failed."""
        self.move_to(ShardState.ABANDONED, now)
        self.provider_error = error
        self.succeeded = self.failed = self.pending = 0

    def tag(self) -> str:
        """The suffix of the batch's display name (or its label) that finds it again after a crash."""
        return f"[{self.job_id}/s{self.index}a{self.batch_attempts}]"

    def leased_by_other(self, owner: str, now: datetime) -> bool:
        return bool(self.lease_owner and self.lease_owner != owner and self.lease_until and self.lease_until > now)

    def items_done(self) -> int:
        return self.succeeded + self.failed


def shard_doc_id(index: int) -> str:
    return f"{index:06d}"
