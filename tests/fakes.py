"""In-memory fakes of the ports, for unit tests of the use cases. They keep the ports' guarantees
(atomic create, copy-on-read documents, objects appearing only when a write completes), so a use case that
works with them relies on nothing an adapter does not promise."""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

import numpy as np
import orjson

from shared.config import Settings
from shared.domain.jobs import ErrorInfo, Job, JobState
from shared.errors import NotFound, PermanentError, TransientError
from shared.ports import (
    BatchProvider,
    BlobInfo,
    BlobStore,
    ItemResult,
    JobRepository,
    MessagePublisher,
    ProviderBatch,
    ProviderState,
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


class FakeJobRepository(JobRepository):
    def __init__(self):
        self.docs: dict[str, str] = {}
        self.revisions: dict[str, int] = {}
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        self.writes = 0
        self.reads = 0

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            if job.job_id in self.docs:
                return self.get(job.job_id), False
            self._store(job.job_id, job.model_dump_json())
            return self._load(job.job_id), True

    def _load(self, job_id: str) -> Job:
        job = Job.model_validate_json(self.docs[job_id])
        job._revision = self.revisions[job_id]
        return job

    def _store(self, job_id: str, raw: str) -> None:
        self.docs[job_id] = raw
        self.revisions[job_id] = next(self._versions)
        self.writes += 1

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self.reads += 1
            return self._load(job_id) if job_id in self.docs else None

    def replace_if_unchanged(self, job: Job) -> bool:
        with self._lock:
            if job._revision is None:
                raise ValueError(f"job {job.job_id} was not read from this repository")
            if self.revisions.get(job.job_id) != job._revision:
                return False
            self._store(job.job_id, job.model_dump_json())
            job._revision = self.revisions[job.job_id]
            return True

    def update(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T]:
        with self._lock:
            job = self.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            before = self.docs[job_id]
            result = change(job)
            after = job.model_dump_json()
            stored = self._load(job_id)
            if after != before:
                self._store(job_id, after)
                stored = Job.model_validate_json(after)  # its revision unknown, as from a Firestore transaction
            return stored, result

    def due(self, now: datetime, limit: int) -> list[Job]:
        with self._lock:
            jobs = [self._load(job_id) for job_id in self.docs]
            self.reads += len(jobs)
        due = sorted((j for j in jobs if j.next_poll_at and j.next_poll_at <= now), key=lambda j: j.next_poll_at)
        return due[:limit]

    def list(self, *, state: JobState | None = None, limit: int = 50, after: str | None = None):
        jobs = sorted((self._load(job_id) for job_id in self.docs), key=lambda j: (j.created_at, j.job_id), reverse=True)
        if state:
            jobs = [j for j in jobs if j.state == state]
        if after:
            ids = [j.job_id for j in jobs]
            jobs = jobs[ids.index(after) + 1:] if after in ids else []
        page = jobs[:limit]
        return page, (page[-1].job_id if len(jobs) > limit else None)


class _Writer(io.BytesIO):
    pass


class FakeBlobStore(BlobStore):
    def __init__(self):
        self.objects: dict[str, tuple[bytes, BlobInfo]] = {}
        self._generations = itertools.count(1)

    def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None, content_encoding: str | None = None) -> BlobInfo:
        info = BlobInfo(
            uri=uri, size=len(data), generation=str(next(self._generations)), content_type=content_type,
            content_encoding=content_encoding, crc32c=hashlib.md5(data).hexdigest()[:8], md5=hashlib.md5(data).hexdigest(),
            metadata=dict(metadata or {}),
        )
        self.objects[uri] = (data, info)
        return info

    def read(self, uri: str) -> bytes:
        return self.objects[uri][0]

    def stat(self, uri: str) -> BlobInfo | None:
        entry = self.objects.get(uri)
        return entry[1] if entry else None

    @contextmanager
    def open_read(self, uri: str, generation: str | None = None) -> Iterator[BinaryIO]:
        entry = self.objects.get(uri)
        if entry is None or (generation is not None and entry[1].generation != str(generation)):
            raise NotFound(f"{uri} (generation {generation}) does not exist")
        yield io.BytesIO(entry[0])

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        buffer = _Writer()
        yield buffer  # an exception here leaves the store unchanged
        self.put(uri, buffer.getvalue(), content_type)

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        return self.put(uri, data, content_type)

    def list(self, prefix_uri: str) -> Iterator[BlobInfo]:
        for uri in sorted(self.objects):
            if uri.startswith(prefix_uri):
                yield self.objects[uri][1]

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)


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


def fake_vector(text: str, dims: int) -> list[float]:
    """A deterministic, not normalised vector for `text` (so normalisation is observable)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(dims) * 3.0).astype(np.float32).tolist()


class FakeBatchProvider(BatchProvider):
    """Batches live in memory; `finish` and `fail` move them along as a test wants."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.batches: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.calls: dict[str, int] = {}
        self.create_errors: list[Exception] = []
        self.failing_texts: set[str] = set()
        self.crash_after_create: Exception | None = None
        self.unreadable_results: Exception | None = None
        self._ids = itertools.count(1)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def upload_requests(self, chunks: Iterable[bytes], size: int, display_name: str) -> str:
        self._count("upload")
        data = b"".join(chunks)
        assert len(data) == size, "upload size mismatch"
        name = f"files/f{next(self._ids)}"
        self.files[name] = data
        return name

    def create_batch(self, *, model, display_name, priority, requests=None, file_name=None) -> ProviderBatch:
        self._count("create")
        if self.create_errors:
            raise self.create_errors.pop(0)
        if requests is None:
            requests = [orjson.loads(line) for line in self.files[file_name].splitlines() if line.strip()]
        name = f"batches/b{next(self._ids)}"
        self.batches[name] = {
            "display_name": display_name, "requests": requests, "state": ProviderState.PENDING,
            "create_time": self.clock(), "model": model, "priority": priority, "error": None,
        }
        if self.crash_after_create is not None:
            exc, self.crash_after_create = self.crash_after_create, None
            raise exc
        return self._view(name)

    def _view(self, name: str) -> ProviderBatch:
        b = self.batches[name]
        total = len(b["requests"])
        done = b["state"] == ProviderState.SUCCEEDED
        failed = sum(1 for r in b["requests"] if self._text(r) in self.failing_texts) if done else 0
        running = 0 if done else b.get("done", 0)
        return ProviderBatch(
            name=name, state=b["state"], display_name=b["display_name"], total=total,
            succeeded=total - failed if done else running, failed=failed, pending=0 if done else total - running,
            error=b["error"], create_time=b["create_time"],
        )

    @staticmethod
    def _text(request: dict) -> str:
        return request["request"]["content"]["parts"][0]["text"]

    def find_batch(self, display_name_suffix: str, created_after: datetime) -> ProviderBatch | None:
        self._count("list")
        for name, b in self.batches.items():
            if b["display_name"].endswith(display_name_suffix) and b["create_time"] >= created_after:
                return self._view(name)
        return None

    def get_batch(self, name: str) -> ProviderBatch:
        self._count("get")
        if name not in self.batches:
            raise NotFound(f"no batch {name}")
        return self._view(name)

    def cancel_batch(self, name: str) -> None:
        self._count("cancel")
        if self.batches[name]["state"] in (ProviderState.PENDING, ProviderState.RUNNING):
            self.batches[name]["state"] = ProviderState.CANCELLED

    def iter_results(self, name: str) -> Iterator[ItemResult]:
        self._count("results")
        if self.unreadable_results is not None:
            raise self.unreadable_results
        b = self.batches[name]
        if b["state"] != ProviderState.SUCCEEDED:
            raise PermanentError(f"batch {name} is {b['state']}")
        for request in reversed(b["requests"]):  # out of order, as the real API may answer
            text = self._text(request)
            if text in self.failing_texts:
                yield ItemResult(key=request["key"], error=ErrorInfo(code="INTERNAL", message="item failed"))
            else:
                yield ItemResult(key=request["key"], values=fake_vector(text, request["request"]["outputDimensionality"]))

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
    return Context(
        jobs=FakeJobRepository(),
        blobs=FakeBlobStore(),
        provider=FakeBatchProvider(clock),
        publisher=FakePublisher(),
        settings=settings or Settings(),
        clock=clock,
    )


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
        jobs=Mortal(ctx.jobs, "jobs", life), blobs=Mortal(ctx.blobs, "blobs", life),
        provider=Mortal(ctx.provider, "provider", life), publisher=Mortal(ctx.publisher, "publisher", life),
        settings=ctx.settings, clock=ctx.clock,
    )
    return worker, life
