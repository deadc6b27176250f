"""In-memory fakes of the ports, for unit tests of the use cases. They keep the ports' guarantees
(atomic create and transactions, copy-on-read documents, objects appearing only when a write completes), so
a use case that works with them relies on nothing an adapter does not promise.

The provider fake is provider-neutral (it reads staged items, not any vendor's request lines) and plays the
faults the pipeline must survive: a create refused for a quota (429, nothing made), a create that reached
the provider while its answer was lost, batches listed in any order, cancels that fail.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

import numpy as np
import orjson

from shared.config import Settings
from shared.domain.capabilities import Capabilities, Quotas
from shared.domain.jobs import ErrorInfo, Job, JobState, Shard, ShardState, shard_doc_id
from shared.domain.ledger import Ledger
from shared.domain.options import JobOptions
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.ports import (
    BatchProvider,
    BlobInfo,
    BlobStore,
    EmbeddingCache,
    ItemResult,
    JobRepository,
    JobTx,
    LedgerRepository,
    MessagePublisher,
    ProviderBatch,
    ProviderState,
    StagedItem,
)
from shared.services.context import Context

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class FakeMonotonic:
    """Invocation time budgets, measured on the fake clock (so a test moves time on purpose)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def __call__(self) -> float:
        return self.clock.now.timestamp()


# -- jobs, shards, markers ---------------------------------------------------------------------------------


class FakeJobRepository(JobRepository):
    """Documents kept as JSON text (copy on read); a lock makes every transaction atomic."""

    def __init__(self):
        self.docs: dict[str, str] = {}
        self.shard_docs: dict[tuple[str, int], str] = {}
        self.revisions: dict[Any, str] = {}
        self.markers: dict[str, dict] = {}
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        self.writes = 0
        self.reads = 0

    # -- plumbing ----------------------------------------------------------------------------

    def _bump(self, key: Any) -> str:
        self.revisions[key] = str(next(self._versions))
        self.writes += 1
        return self.revisions[key]

    def _job(self, job_id: str) -> Job:
        job = Job.model_validate_json(self.docs[job_id])
        job._revision = self.revisions[job_id]
        return job

    def _shard(self, key: tuple[str, int]) -> Shard:
        shard = Shard.model_validate_json(self.shard_docs[key])
        shard._revision = self.revisions[key]
        return shard

    def size_of(self, job_id: str) -> int:
        """The stored job document's size in bytes, by Firestore's rules (see `firestore_size`)."""
        return firestore_size(json.loads(self.docs[job_id]))

    # -- jobs --------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            if job.job_id in self.docs:
                return self.get(job.job_id), False
            self.docs[job.job_id] = job.model_dump_json()
            self._bump(job.job_id)
            return self._job(job.job_id), True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self.reads += 1
            return self._job(job_id) if job_id in self.docs else None

    def update(self, job_id: str, change: Callable[[JobTx], T], *, shards: Iterable[int] = ()) -> tuple[JobTx, T]:
        with self._lock:
            if job_id not in self.docs:
                raise NotFound(f"no job {job_id}")
            self.reads += 1
            job = self._job(job_id)
            wanted = list(shards)
            tx = JobTx(job=job, shards={i: self._shard((job_id, i)) if (job_id, i) in self.shard_docs else None
                                        for i in wanted})
            before_job = self.docs[job_id]
            before = {i: (s.model_dump_json() if s else None) for i, s in tx.shards.items()}
            result = change(tx)
            for child in tx.added:
                if (job_id, child.index) in self.shard_docs:
                    raise AssertionError(f"shard {job_id}/{child.index} exists")
            after_job = tx.job.model_dump_json()
            if after_job != before_job:
                self.docs[job_id] = after_job
                tx.job._revision = self._bump(job_id)
            for i, shard in tx.shards.items():
                if shard is not None and shard.model_dump_json() != before[i]:
                    self.shard_docs[(job_id, i)] = shard.model_dump_json()
                    shard._revision = self._bump((job_id, i))
            for child in tx.added:
                self.shard_docs[(job_id, child.index)] = child.model_dump_json()
                child._revision = self._bump((job_id, child.index))
            return tx, result

    def replace_if_unchanged(self, job: Job) -> bool:
        with self._lock:
            if job._revision is None:
                raise ValueError(f"job {job.job_id} was not read from this repository")
            if self.revisions.get(job.job_id) != job._revision:
                return False
            self.docs[job.job_id] = job.model_dump_json()
            job._revision = self._bump(job.job_id)
            return True

    def due(self, now: datetime, limit: int) -> list[Job]:
        with self._lock:
            jobs = [self._job(job_id) for job_id in self.docs]
        due = sorted((j for j in jobs if j.next_poll_at and j.next_poll_at <= now), key=lambda j: j.next_poll_at)
        self.reads += len(due[:limit])
        return due[:limit]

    def list(self, *, state: JobState | None = None, limit: int = 50, after: str | None = None):
        with self._lock:
            jobs = sorted((self._job(job_id) for job_id in self.docs), key=lambda j: (j.created_at, j.job_id), reverse=True)
        if state:
            jobs = [j for j in jobs if j.state == state]
        if after:
            ids = [j.job_id for j in jobs]
            jobs = jobs[ids.index(after) + 1:] if after in ids else []
        page = jobs[:limit]
        return page, (page[-1].job_id if len(jobs) > limit else None)

    def exist(self, job_ids: list[str]) -> set[str]:
        with self._lock:
            self.reads += len(job_ids)
            return {job_id for job_id in job_ids if job_id in self.docs}

    # -- shards ------------------------------------------------------------------------------

    def get_shard(self, job_id: str, index: int) -> Shard | None:
        with self._lock:
            self.reads += 1
            key = (job_id, index)
            return self._shard(key) if key in self.shard_docs else None

    def shards(self, job_id: str, *, states: Iterable[str] | None = None, limit: int | None = None) -> Iterator[Shard]:
        wanted = {str(s) for s in states} if states is not None else None
        with self._lock:
            found = [self._shard(key) for key in sorted(k for k in self.shard_docs if k[0] == job_id)]
        yield from [s for s in found if wanted is None or s.state.value in wanted][:limit]

    def update_shard(self, job_id: str, index: int, change: Callable[[Shard], T]) -> tuple[Shard, T]:
        with self._lock:
            key = (job_id, index)
            if key not in self.shard_docs:
                raise NotFound(f"no shard {job_id}/{index}")
            self.reads += 1
            shard = self._shard(key)
            before = self.shard_docs[key]
            result = change(shard)
            if shard.model_dump_json() != before:
                self.shard_docs[key] = shard.model_dump_json()
                shard._revision = self._bump(key)
            return shard, result

    def replace_shard_if_unchanged(self, shard: Shard) -> bool:
        with self._lock:
            key = (shard.job_id, shard.index)
            if shard._revision is None:
                raise ValueError(f"shard {key} was not read from this repository")
            if self.revisions.get(key) != shard._revision:
                return False
            self.shard_docs[key] = shard.model_dump_json()
            shard._revision = self._bump(key)
            return True

    def _all_shards(self) -> list[Shard]:
        with self._lock:
            return [self._shard(key) for key in self.shard_docs]

    def due_shards(self, now: datetime, limit: int) -> list[Shard]:
        due = sorted((s for s in self._all_shards() if s.next_poll_at and s.next_poll_at <= now),
                     key=lambda s: (s.next_poll_at, s.job_id, s.index))[:limit]
        self.reads += len(due)
        return due

    def _queue(self, ledger: str) -> list[Shard]:
        waiting = [s for s in self._all_shards() if s.state == ShardState.STAGED and s.ledger == ledger]
        return sorted(waiting, key=lambda s: (-s.priority, s.fair_key, s.created_at, s.job_id, s.index))

    def waiting_shards(self, ledger: str, limit: int) -> list[Shard]:
        head = self._queue(ledger)[:limit]
        self.reads += len(head)
        return head

    def queue_ahead(self, ledger: str, priority: int, fair_key: float) -> tuple[int, int]:
        ahead = [s for s in self._queue(ledger) if s.priority > priority or (s.priority == priority and s.fair_key < fair_key)]
        return len(ahead), sum(s.estimated_tokens for s in ahead)

    def shard_of_batch(self, batch_name: str) -> Shard | None:
        return next((s for s in self._all_shards() if s.batch_name == batch_name), None)

    def marker(self, name: str) -> dict:
        with self._lock:
            return dict(self.markers.get(name, {}))

    def set_marker(self, name: str, value: dict) -> None:
        with self._lock:
            self.markers[name] = dict(value)


def firestore_size(value: Any, *, name: str = "") -> int:
    """A document's stored size by Firestore's documented rules (strings: UTF-8 bytes + 1; numbers, times:
    8; booleans, null: 1; maps and arrays: the sum of their parts; field names count like strings; plus 32
    for the document). Close enough to bound a document's growth."""
    def size(v: Any) -> int:
        if v is None or isinstance(v, bool):
            return 1
        if isinstance(v, int | float):
            return 8
        if isinstance(v, str):
            return len(v.encode()) + 1
        if isinstance(v, list):
            return sum(size(x) for x in v)
        if isinstance(v, dict):
            return sum(len(str(k).encode()) + 1 + size(x) for k, x in v.items())
        return 8

    return size(value) + len(name.encode()) + 1 + 32


class FakeEmbeddingCache(EmbeddingCache):
    def __init__(self):
        self.entries: dict[str, bytes] = {}
        self.reads = 0
        self.writes = 0

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        self.reads += len(keys)
        return {key: self.entries[key] for key in keys if key in self.entries}

    def put_many(self, entries: dict[str, bytes]) -> None:
        self.writes += len(entries)
        self.entries.update(entries)


class FakeLedgerRepository(LedgerRepository):
    def __init__(self):
        self.docs: dict[str, str] = {}
        self._lock = threading.RLock()

    def get(self, key: str) -> Ledger | None:
        with self._lock:
            return Ledger.model_validate_json(self.docs[key]) if key in self.docs else None

    def update(self, key: str, change: Callable[[Ledger], T]) -> tuple[Ledger, T]:
        with self._lock:
            ledger = self.get(key) or Ledger(key=key)
            result = change(ledger)
            self.docs[key] = ledger.model_dump_json()
            return ledger, result

    def list_keys(self) -> list[str]:
        with self._lock:
            return sorted(self.docs)


# -- objects -----------------------------------------------------------------------------------------------


class _Writer(io.BytesIO):
    pass


class FakeBlobStore(BlobStore):
    def __init__(self, clock: Callable[[], datetime] | None = None):
        self.objects: dict[str, tuple[bytes, BlobInfo]] = {}
        self._generations = itertools.count(1)
        self._clock = clock or (lambda: datetime(2026, 1, 1, tzinfo=UTC))
        self.fail_list: Exception | None = None

    def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None, content_encoding: str | None = None) -> BlobInfo:
        info = BlobInfo(
            uri=uri, size=len(data), generation=str(next(self._generations)), content_type=content_type,
            content_encoding=content_encoding, crc32c=hashlib.md5(data).hexdigest()[:8], md5=hashlib.md5(data).hexdigest(),
            metadata=dict(metadata or {}), updated=self._clock(),
        )
        self.objects[uri] = (data, info)
        return info

    def read(self, uri: str) -> bytes:
        return self.objects[uri][0]

    def stat(self, uri: str) -> BlobInfo | None:
        entry = self.objects.get(uri)
        return entry[1] if entry else None

    @contextmanager
    def open_read(self, uri: str, generation: str | None = None, offset: int = 0) -> Iterator[BinaryIO]:
        entry = self.objects.get(uri)
        if entry is None or (generation is not None and entry[1].generation != str(generation)):
            raise NotFound(f"{uri} (generation {generation}) does not exist")
        yield io.BytesIO(entry[0][offset:])

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        buffer = _Writer()
        yield buffer  # an exception here leaves the store unchanged
        self.put(uri, buffer.getvalue(), content_type)

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        return self.put(uri, data, content_type)

    def list(self, prefix_uri: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[BlobInfo]:
        if self.fail_list is not None:
            raise self.fail_list
        bucket_root = prefix_uri[: prefix_uri.index("/", 5) + 1]
        listed = 0
        for uri in sorted(self.objects):
            if not uri.startswith(prefix_uri) or (start_after is not None and uri[len(bucket_root):] <= start_after):
                continue
            if limit is not None and listed >= limit:
                return
            listed += 1
            yield self.objects[uri][1]

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)

    def compose(self, sources: list[str], dest: str, content_type: str) -> BlobInfo:
        return self.put(dest, b"".join(self.read(s) for s in sources), content_type)


class FakePublisher(MessagePublisher):
    def __init__(self):
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail_next: Exception | None = None

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.messages.append((topic, data, dict(attributes)))
        return str(len(self.messages))

    def on(self, topic: str) -> list[dict]:
        return [orjson.loads(data) for t, data, _ in self.messages if t == topic]


# -- the provider ------------------------------------------------------------------------------------------


def fake_vector(text: str, dims: int) -> list[float]:
    """A deterministic, not normalised vector for `text` (so normalisation is observable)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(dims) * 3.0).astype(np.float32).tolist()


FAKE_CAPABILITIES = Capabilities(
    provider="fake", model="fake-embedding", task_types=("RETRIEVAL_DOCUMENT", "RETRIEVAL_QUERY", "SEMANTIC_SIMILARITY",
                                                         "CLUSTERING", "CLASSIFICATION", "TASK_TYPE_UNSPECIFIED"),
    default_task_type="RETRIEVAL_DOCUMENT", min_dimensions=128, max_dimensions=3072, recommended_dimensions=(768,),
    max_input_tokens=2048, max_batch_rows=None, max_batch_bytes=2_000_000_000, title_task_types=("RETRIEVAL_DOCUMENT",),
    quotas=Quotas(), price_batch_per_million=0.075, price_interactive_per_million=0.15,
)


class FakeBatchProvider(BatchProvider):
    """Batches live in memory; `finish_all`, `progress` and the state field move them as a test wants.

    Faults: `create_errors` (raised by the next creates, nothing made), `lose_answers` (the next creates
    make their batch, then raise: the answer is lost), `quota_tokens`/`quota_batches` (429 when the
    tokens or batches of active batches would pass them, counted by the items' token estimates), `list_order`
    ("newest", "oldest", "random"), `cancel_errors`, `failing_texts` (an item error each), `missing_texts` (no
    result at all).
    """

    name = "fake"

    def __init__(self, clock: FakeClock, *, name: str = "fake", capabilities: Capabilities = FAKE_CAPABILITIES):
        self.name = name
        self._capabilities = capabilities
        self.clock = clock
        self.batches: dict[str, dict] = {}
        self.files: dict[str, list[StagedItem]] = {}
        self.calls: dict[str, int] = {}
        self.create_errors: list[Exception] = []
        self.lose_answers: list[Exception] = []
        self.cancel_errors: list[Exception] = []
        self.quota_tokens: int | None = None
        self.quota_batches: int | None = None
        self.refusals = 0
        self.peak_tokens = 0
        self.failing_texts: set[str] = set()
        self.missing_texts: set[str] = set()  # items the results leave out
        self.unreadable_results: Exception | None = None
        self.list_order = "newest"
        self.results_deletable = True
        self.salt = ""  # changes every vector it makes (a model whose answers drift between runs)
        self.items_uploaded = 0
        self._random = random.Random(7)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def capabilities(self, model: str) -> Capabilities:
        plain = model.rsplit("/", 1)[-1]
        if plain not in (self._capabilities.model, "gemini-embedding-001"):
            raise PermanentError(f"no model {model}")
        return replace(self._capabilities, provider=self.name, model=plain)

    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions, display_name: str) -> tuple[str, int]:
        self._count("upload")
        staged = list(items())
        self.items_uploaded += len(staged)
        name = f"files/f{next(self._ids)}"
        self.files[name] = staged
        return name, sum(len(i.text) for i in staged)

    @staticmethod
    def tokens_of(items: list[StagedItem]) -> int:
        from shared.ingest import estimate_tokens

        return sum(estimate_tokens(i.text) for i in items)

    def active(self) -> list[dict]:
        return [b for b in self.batches.values() if b["state"] in (ProviderState.PENDING, ProviderState.RUNNING)]

    def create_batch(self, *, options: JobOptions, input_ref: str, display_name: str, tag: str) -> ProviderBatch:
        with self._lock:
            self._count("create")
            if self.create_errors:
                raise self.create_errors.pop(0)
            if input_ref not in self.files:
                raise PermanentError(f"400 INVALID_ARGUMENT: file {input_ref} not found")
            items = self.files[input_ref]
            tokens = self.tokens_of(items)
            held = sum(b["tokens"] for b in self.active())
            if (self.quota_tokens is not None and held + tokens > self.quota_tokens) or \
                    (self.quota_batches is not None and len(self.active()) >= self.quota_batches):
                self.refusals += 1
                raise CapacityExhausted("429 RESOURCE_EXHAUSTED: enqueued tokens over the quota")
            name = f"batches/b{next(self._ids)}"
            self.batches[name] = {
                "display_name": display_name, "items": items, "state": ProviderState.PENDING, "tokens": tokens,
                "create_time": self.clock(), "model": options.model, "priority": options.priority, "error": None,
                "dims": options.output_dimensionality, "input": input_ref,
            }
            self.peak_tokens = max(self.peak_tokens, held + tokens)
            if self.lose_answers:
                raise self.lose_answers.pop(0)
            return self._view(name)

    def _view(self, name: str) -> ProviderBatch:
        b = self.batches[name]
        total = len(b["items"])
        done = b["state"] == ProviderState.SUCCEEDED
        failed = sum(1 for i in b["items"] if i.text in self.failing_texts) if done else 0
        running = 0 if done else b.get("done", 0)
        return ProviderBatch(
            name=name, state=b["state"], display_name=b["display_name"], total=total,
            succeeded=total - failed if done else running, failed=failed, pending=0 if done else total - running,
            error=b["error"], create_time=b["create_time"],
        )

    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        self._count("list")
        names = list(self.batches)
        if self.list_order == "newest":
            names.reverse()
        elif self.list_order == "random":
            self._random.shuffle(names)
        return [self._view(n) for n in names
                if self.batches[n]["display_name"].endswith(tag) and self.batches[n]["create_time"] >= created_after]

    def get_batch(self, name: str) -> ProviderBatch:
        self._count("get")
        if name not in self.batches:
            raise NotFound(f"no batch {name}")
        return self._view(name)

    def cancel_batch(self, name: str) -> None:
        self._count("cancel")
        if self.cancel_errors:
            raise self.cancel_errors.pop(0)
        if name in self.batches and self.batches[name]["state"] in (ProviderState.PENDING, ProviderState.RUNNING):
            self.batches[name]["state"] = ProviderState.CANCELLED

    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        self._count("results")
        if self.unreadable_results is not None:
            raise self.unreadable_results
        b = self.batches[name]
        if b["state"] != ProviderState.SUCCEEDED:
            raise PermanentError(f"batch {name} is {b['state']}")
        for item in list(reversed(b["items"]))[start:]:  # out of order, as the real API may answer
            if item.text in self.missing_texts:
                continue
            if item.text in self.failing_texts:
                yield ItemResult(key=item.key, error=ErrorInfo(code="INTERNAL", message="item failed"))
            else:
                yield ItemResult(key=item.key, values=fake_vector(self.salt + item.text, b["dims"]))

    def delete_input(self, input_ref: str) -> None:
        self._count("delete_input")
        self.files.pop(input_ref, None)

    def delete_results(self, name: str) -> bool:
        self._count("delete_results")
        return self.results_deletable

    def embed_query(self, text: str, options: JobOptions) -> list[float]:
        self._count("embed_query")
        return fake_vector(text, options.output_dimensionality)

    # -- test controls ------------------------------------------------------------------------

    def progress(self, name: str, done: int) -> None:
        """The batch runs and has `done` items done so far."""
        self.batches[name].update(state=ProviderState.RUNNING, done=done)

    def finish_all(self, state: ProviderState = ProviderState.SUCCEEDED) -> None:
        for b in self.batches.values():
            if b["state"] in (ProviderState.PENDING, ProviderState.RUNNING):
                b["state"] = state
                if state in (ProviderState.FAILED, ProviderState.EXPIRED):
                    b["error"] = ErrorInfo(code=state.value, message=f"batch {state.value.lower()}")

    def fail_creates(self, *errors: Exception) -> None:
        self.create_errors.extend(errors)


def transient(message: str = "busy") -> TransientError:
    return TransientError(message)


def make_context(settings: Settings | None = None, clock: FakeClock | None = None) -> Context:
    clock = clock or FakeClock()
    settings = settings or Settings()
    settings = settings.model_copy(update={"provider": "fake"}) if settings.provider == "gemini" else settings
    provider = FakeBatchProvider(clock)
    return Context(
        jobs=FakeJobRepository(),
        ledgers=FakeLedgerRepository(),
        blobs=FakeBlobStore(clock),
        providers={"fake": provider},
        publisher=FakePublisher(),
        settings=settings,
        cache=FakeEmbeddingCache() if settings.reuse_embeddings else None,
        clock=clock,
        monotonic=FakeMonotonic(clock),
        started=clock.now.timestamp(),
    )


# -- the functions, as Pub/Sub and the scheduler would drive them -------------------------------------------


@dataclass
class Deliveries:
    """Deliver the published internal messages to their use cases, as the relay does on the local stack."""

    ctx: Context
    delivered: int = 0

    def pending(self) -> list[tuple[str, dict]]:
        internal = {self.ctx.settings.stage_topic, self.ctx.settings.complete_topic, self.ctx.settings.poll_topic}
        return [(t, orjson.loads(d)) for t, d, _ in self.ctx.publisher.messages[self.delivered:] if t in internal]

    def run(self, rounds: int = 20, on_error: Callable[[Exception], None] | None = None) -> int:
        """Deliver what is pending (and what that publishes), up to `rounds` passes; returns how many."""
        from shared.services.complete import complete_message
        from shared.services.poll import poll_work
        from shared.services.submit import resume_submission, submit_object

        settings = self.ctx.settings
        count = 0
        for _ in range(rounds):
            messages = self.ctx.publisher.messages[self.delivered:]
            self.delivered = len(self.ctx.publisher.messages)
            if not messages:
                break
            for topic, data, _ in messages:
                payload = orjson.loads(data)
                worker = self.ctx.for_invocation()
                try:
                    if topic == settings.stage_topic:
                        if "source" in payload:
                            from shared.domain.jobs import SourceObject

                            submit_object(worker, SourceObject.model_validate(payload["source"]))
                        else:
                            resume_submission(worker, payload["job_id"])
                    elif topic == settings.complete_topic:
                        complete_message(worker, payload["job_id"], payload.get("shard"))
                    elif topic == settings.poll_topic:
                        poll_work(worker, payload)
                    else:
                        continue
                    count += 1
                except (TransientError, PermanentError) as exc:
                    if on_error is None:
                        raise
                    on_error(exc)
        return count


# -- workers that die mid-way ----------------------------------------------------------------------
# A worker "dies" after its k-th port call: the call completes, then `Crash` (a BaseException no handler
# catches) is raised, and every later port call of that worker raises `Crash` too: a dead process makes no
# call, so it neither releases its lease nor cancels an upload (its lease lapses; its upload is never
# committed).


class Crash(BaseException):
    """The worker's process dies here: nothing catches it, nothing runs after it."""


@dataclass
class Life:
    """A worker's port calls: counted, and fatal after `budget` of them (never, when None)."""

    budget: int | None = None
    calls: list[str] = field(default_factory=list)
    dead: bool = False


class Mortal:
    """One port of a mortal worker (any port: the use cases only call its methods)."""

    def __init__(self, port: Any, label: str, life: Life):
        self._port = port
        self._label = label
        self._life = life

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._port, name)
        if not callable(value):
            return value
        life, label = self._life, self._label

        def call(*args: Any, **kwargs: Any) -> Any:
            if life.dead:
                raise Crash(f"dead before {label}.{name}")
            result = value(*args, **kwargs)
            life.calls.append(f"{label}.{name}")
            if life.budget is not None and len(life.calls) >= life.budget:
                life.dead = True
                raise Crash(f"died after call {len(life.calls)}: {label}.{name}")
            return result

        return call


def mortal(ctx: Context, budget: int | None = None) -> tuple[Context, Life]:
    """A fresh worker over `ctx`'s services whose port calls are counted, dying after `budget` of them."""
    life = Life(budget)
    worker = Context(
        jobs=Mortal(ctx.jobs, "jobs", life), ledgers=Mortal(ctx.ledgers, "ledgers", life),
        blobs=Mortal(ctx.blobs, "blobs", life),
        providers={name: Mortal(p, "provider", life) for name, p in ctx.providers.items()},
        publisher=Mortal(ctx.publisher, "publisher", life), settings=ctx.settings, clock=ctx.clock,
        cache=Mortal(ctx.cache, "cache", life) if ctx.cache is not None else None,
        monotonic=ctx.monotonic, started=ctx.monotonic(),
    )
    return worker, life


def shard_key(shard: Shard) -> str:
    return f"{shard.job_id}/{shard_doc_id(shard.index)}"
