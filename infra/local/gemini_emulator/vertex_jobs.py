"""Vertex AI batch prediction jobs for the embedding models: the registry and the runner.

Guarantees, as the Vertex surface promises them (VERTEX.md):
- A job reads its JSONL input from Cloud Storage (fake-gcs-server), embeds each line with the same embedder,
  the same token counter and the same fault plan as the Gemini surface (item failures, pending_seconds,
  expire/fail, hold_queue, seconds_per_item), and writes `predictions.jsonl` under
  `<outputUriPrefix>/prediction-model-<time>/` (its `outputInfo.gcsOutputDirectory`), one line per input
  line: `{"key", "request", "response": {"embedding": {"values"}, "tokenCount"}}` or, for a failed item,
  `{"key", "request", "status": "<reason>: {\"error\": {...}}"}`.
- States: PENDING -> RUNNING -> SUCCEEDED (every item embedded) | PARTIALLY_SUCCEEDED (some items failed) |
  FAILED (input unreadable or over the limits; the fail_batches fault) | EXPIRED (expire_batches).
  Cancel: PENDING -> CANCELLED at once; RUNNING -> CANCELLING, then CANCELLED before its next model batch,
  with the rows done so far exported (as Vertex AI exports completed rows of a terminated job).
- Deletes: only ended jobs (FAILED_PRECONDITION otherwise); answered with a done long-running operation.
- gemini-embedding-2 takes task and title in the text: `task_type`/`title` in `embed_content_config` are
  ignored for it, as its documentation says.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embedder import Embedder
from .faults import BatchFate, Faults
from .schema import EMPTY_CONTENT_MESSAGE, EmbedItem, parse_embed_request
from .tokens import TokenCounter
from .vertex_gcs import Storage
from .wire import GRPC_CODES, ApiError, dumps, loads, page_token, parse_page_token, rfc3339

__all__ = ["BATCH_MODELS", "JobState", "VertexJob", "VertexJobs", "embed_request", "parse_filter"]

log = logging.getLogger("gemini_emulator")

#: Where Vertex AI serves each embedding model in batch (its batch embeddings page).
BATCH_MODELS = {
    "gemini-embedding-001": frozenset({"us-central1", "us-east1", "us-east4", "us-west1", "us-west4",
                                       "europe-west1", "europe-west4"}),
    "gemini-embedding-2": frozenset({"global", "us", "eu"}),
}
TASK_IN_TEXT = frozenset({"gemini-embedding-2"})
MAX_INPUT_BYTES = 1_000_000_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_WINDOW = 256
_CONFIG_FIELDS = {"output_dimensionality", "task_type", "title", "auto_truncate"}


class JobState:
    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    SUCCEEDED = "JOB_STATE_SUCCEEDED"
    PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"
    FAILED = "JOB_STATE_FAILED"
    CANCELLING = "JOB_STATE_CANCELLING"
    CANCELLED = "JOB_STATE_CANCELLED"
    EXPIRED = "JOB_STATE_EXPIRED"
    ENDED = frozenset({SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELLED, EXPIRED})


@dataclass
class VertexJob:
    id: str
    project: str
    location: str
    model_id: str
    spec: dict[str, Any]  # displayName, model, inputConfig, outputConfig, labels as the create normalised them
    fate: BatchFate
    not_before: float
    seq: int
    create_time: float = field(default_factory=time.time)
    update_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    state: str = JobState.PENDING
    succeeded: int = 0
    failed: int = 0
    total: int | None = None
    output_directory: str | None = None
    error: dict[str, Any] | None = None
    deleted: bool = False
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{self.id}"

    @property
    def labels(self) -> dict[str, str]:
        return self.spec.get("labels") or {}

    def resource(self) -> dict[str, Any]:
        """The job in proto3 JSON, as Vertex AI answers it (int64 as strings, empty fields left out)."""
        out: dict[str, Any] = {"name": self.name, **self.spec, "state": self.state,
                               "createTime": rfc3339(self.create_time),
                               "updateTime": rfc3339(self.update_time or self.create_time)}
        if self.start_time is not None:
            out["startTime"] = rfc3339(self.start_time)
        if self.end_time is not None:
            out["endTime"] = rfc3339(self.end_time)
        if self.output_directory:
            out["outputInfo"] = {"gcsOutputDirectory": self.output_directory}
        if self.state != JobState.PENDING:
            incomplete = -1 if self.total is None else max(self.total - self.succeeded - self.failed, 0)
            stats = {"successfulCount": str(self.succeeded), "failedCount": str(self.failed),
                     "incompleteCount": str(incomplete)}
            out["completionStats"] = {k: v for k, v in stats.items() if v != "0"}
        if self.error:
            out["error"] = self.error
        if not out.get("labels"):
            out.pop("labels", None)
        return out


class _Stopped(Exception):
    """The job was cancelled, deleted or reset, or the emulator is stopping."""


def embed_request(request: Any, model_id: str, where: str, strict: bool) -> EmbedItem:
    """A Vertex input line's `request` ({content, embed_content_config}) as the embedding item the Gemini
    surface would make of the same request (so both surfaces give the same vector for the same text)."""
    if not isinstance(request, dict):
        raise ApiError(400, f"{where}: request must be an object.")
    unknown = set(request) - {"content", "embed_content_config", "embedContentConfig"}
    if unknown:
        raise ApiError(400, f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at \'{where}\'.')
    config = request.get("embed_content_config", request.get("embedContentConfig")) or {}
    if not isinstance(config, dict):
        raise ApiError(400, f"{where}.embed_content_config must be an object.")
    config = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in config.items()}
    unknown = set(config) - _CONFIG_FIELDS
    if unknown:
        raise ApiError(400, f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at '
                            f"'{where}.embed_content_config'.")
    gemini: dict[str, Any] = {"content": request.get("content", {})}
    if config.get("output_dimensionality") is not None:
        gemini["outputDimensionality"] = config["output_dimensionality"]
    if model_id not in TASK_IN_TEXT:  # gemini-embedding-2 ignores them silently
        for name, wire in (("task_type", "taskType"), ("title", "title")):
            if config.get(name) is not None:
                gemini[wire] = config[name]
    return parse_embed_request(gemini, where, strict)


def parse_filter(text: str | None) -> Callable[[VertexJob], bool]:
    """A predicate from the list filter subset the emulator understands: terms joined by AND, each
    `labels.K=V`, `labels.K:*`, `state=S`, `state!=S`, `display_name=V`, `display_name:"prefix*"`, or
    `create_time` with =, >, >=, <, <= an RFC 3339 time. Values may be quoted. Anything else is a 400."""
    if not text or not text.strip():
        return lambda job: True
    tests = [_term(term.strip()) for term in re.split(r"\s+AND\s+", text.strip())]
    return lambda job: all(test(job) for test in tests)


_TERM = re.compile(r'^(?P<field>[A-Za-z_][\w.]*|labels\."[^"]+")\s*(?P<op>!=|>=|<=|=|>|<|:)\s*(?P<value>"[^"]*"|\S+)$')


def _term(term: str) -> Callable[[VertexJob], bool]:
    match = _TERM.match(term)
    if match is None:
        raise ApiError(400, f"Unsupported filter term {term!r}: the emulator understands terms joined by AND.")
    name, op, value = match["field"], match["op"], match["value"].strip('"')
    if name.startswith("labels."):
        key = name[len("labels."):].strip('"')
        if op == ":" and value == "*":
            return lambda job: key in job.labels
        if op in ("=", "!="):
            return lambda job: (job.labels.get(key) == value) == (op == "=")
    elif name == "state" and op in ("=", "!="):
        return lambda job: (job.state == value) == (op == "=")
    elif name in ("display_name", "displayName"):
        if op == ":" and value.endswith("*"):
            return lambda job: str(job.spec.get("displayName", "")).startswith(value[:-1])
        if op in ("=", "!=", ":"):
            return lambda job: (job.spec.get("displayName") == value) == (op != "!=")
    elif name in ("create_time", "createTime") and op != ":" and op != "!=":
        moment = _epoch(value)
        compare = {"=": float.__eq__, ">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}[op]
        return lambda job: compare(float(job.create_time), moment)
    raise ApiError(400, f"Unsupported filter term {term!r}.")


def _epoch(value: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(400, f"Invalid timestamp in filter: {value!r}.") from None


class VertexJobs:
    """Jobs of one emulator process, and the threads that run them (one per running job; model work is
    bounded by `model_slots`)."""

    def __init__(self, embedder: Embedder, faults: Faults, tokens: TokenCounter, storage: Storage, work_dir: Path,
                 *, model_slots: int = 2, model_batch_size: int = 32, strict: bool = True,
                 max_rows: int = 1_000_000) -> None:
        self.embedder, self.faults, self.tokens, self.storage = embedder, faults, tokens, storage
        self.work_dir = work_dir
        self.model_batch_size, self.strict, self.max_rows = model_batch_size, strict, max_rows
        self.lock = threading.RLock()
        self.jobs: dict[str, VertexJob] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._slots = threading.BoundedSemaphore(model_slots)
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="vertex-dispatcher", daemon=True)
        self._threads: set[threading.Thread] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._dispatcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self.lock:
            for job in self.jobs.values():
                job.stop.set()
            threads = list(self._threads)
        self.notify()
        deadline = time.monotonic() + timeout
        for thread in [self._dispatcher, *threads]:
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0.0))

    def reset(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.deleted = True
                job.stop.set()
            self.jobs.clear()
            self.operations.clear()
        self.notify()

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- the API's operations -------------------------------------------------------------------------
    def add(self, project: str, location: str, model_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a job; returns it as created (PENDING), before any runner can claim it."""
        fate = self.faults.batch_fate()
        with self.lock:
            self._seq += 1
            job_id = str(random.randrange(10**18, 10**19))  # Vertex AI's ids are 19-digit numbers
            job = VertexJob(id=job_id, project=project, location=location, model_id=model_id, spec=spec, fate=fate,
                            not_before=time.time() + fate.pending_seconds, seq=self._seq)
            self.jobs[job_id] = job
            created = job.resource()
        self.notify()
        log.info("%s created: %s, input %s", job.name, model_id, spec["inputConfig"]["gcsSource"]["uris"])
        return created

    def get(self, location: str, job_id: str) -> VertexJob:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.deleted or job.location != location:
                raise ApiError(404, f"BatchPredictionJob {job_id} not found.")
            return job

    def page(self, location: str, accept: Callable[[VertexJob], bool], size: int | None, token: str | None,
             order: str) -> tuple[list[VertexJob], str | None]:
        if size is not None and size < 0:
            raise ApiError(400, f"page_size must not be negative, got {size}.")
        size = DEFAULT_PAGE_SIZE if not size else min(size, MAX_PAGE_SIZE)
        with self.lock:
            jobs = [j for j in self.jobs.values() if j.location == location and not j.deleted and accept(j)]
        ordered = sorted(jobs, key=lambda j: j.seq, reverse=order == "newest")
        seed, offset = parse_page_token(token, "vertex") if token else (random.randrange(2**31), 0)
        if order == "random":
            random.Random(seed).shuffle(ordered)
        page = ordered[offset:offset + size]
        more = offset + size < len(ordered)
        return page, page_token(seed, offset + size, kind="vertex") if more else None

    def cancel(self, location: str, job_id: str) -> None:
        """PENDING ends CANCELLED now, RUNNING becomes CANCELLING until its runner stops; an ended job is a
        FAILED_PRECONDITION (Vertex AI refuses it), a cancelling one is left as it is."""
        with self.lock:
            job = self.get(location, job_id)
            if job.state in JobState.ENDED:
                raise ApiError(400, f"BatchPredictionJob {job.name} is in state {job.state} and cannot be cancelled.",
                               status="FAILED_PRECONDITION")
            job.stop.set()
            if job.state == JobState.PENDING:
                self._end(job, JobState.CANCELLED)
            elif job.state == JobState.RUNNING:
                job.state, job.update_time = JobState.CANCELLING, time.time()
        self.notify()

    def delete(self, location: str, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.get(location, job_id)
            if job.state not in JobState.ENDED:
                raise ApiError(400, f"BatchPredictionJob {job.name} is in state {job.state}: only ended jobs can be "
                                    "deleted.", status="FAILED_PRECONDITION")
            job.deleted = True
            del self.jobs[job_id]
            op_id = str(random.randrange(10**18, 10**19))
            now = rfc3339(time.time())
            operation = {
                "name": f"projects/{job.project}/locations/{location}/operations/{op_id}",
                "metadata": {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                             "genericMetadata": {"createTime": now, "updateTime": now}},
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
            self.operations[op_id] = operation
            return operation

    def operation(self, op_id: str) -> dict[str, Any]:
        with self.lock:
            if op_id not in self.operations:
                raise ApiError(404, f"Operation {op_id} not found.")
            return self.operations[op_id]

    def states(self) -> dict[str, int]:
        with self.lock:
            counts: dict[str, int] = {}
            for job in self.jobs.values():
                counts[job.state] = counts.get(job.state, 0) + 1
            return counts

    # -- running ------------------------------------------------------------------------------------
    def _claim(self) -> tuple[VertexJob | None, float]:
        now = time.time()
        wait = 0.5
        if self.faults.hold_queue:
            return None, wait
        with self.lock:
            ready = []
            for job in self.jobs.values():
                if job.state != JobState.PENDING or job.stop.is_set():
                    continue
                if job.not_before > now:
                    wait = min(wait, job.not_before - now)
                    continue
                ready.append(job)
            if not ready:
                return None, max(wait, 0.01)
            job = min(ready, key=lambda j: j.seq)
            job.state, job.start_time, job.update_time = JobState.RUNNING, now, now
            return job, 0.0

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            job, wait = self._claim()
            if job is None:
                with self._wake:
                    self._wake.wait(wait)
                continue
            thread = threading.Thread(target=self._run, args=(job,), name=f"vertex-job-{job.id[-6:]}", daemon=True)
            with self.lock:
                self._threads.add(thread)
            thread.start()

    def _end(self, job: VertexJob, state: str, error: dict[str, Any] | None = None) -> None:
        with self.lock:
            if job.deleted or job.state in JobState.ENDED:
                return
            job.state, job.error = state, error
            job.end_time = job.update_time = time.time()
        log.info("%s %s (%d ok, %d failed)", job.name, state, job.succeeded, job.failed)

    def _run(self, job: VertexJob) -> None:
        try:
            if job.fate.expire:
                self._end(job, JobState.EXPIRED)
            elif job.fate.fail:
                self._end(job, JobState.FAILED, _status("INTERNAL", "The job failed (injected by fail_batches)."))
            else:
                self._embed_job(job)
        except ApiError as exc:
            self._end(job, JobState.FAILED, _status(exc.status if exc.status in GRPC_CODES else "INVALID_ARGUMENT",
                                                    exc.message))
        except Exception as exc:
            log.exception("%s failed", job.name)
            self._end(job, JobState.FAILED, _status("INTERNAL", f"Internal error: {type(exc).__name__}: {exc}"))
        finally:
            with self.lock:
                self._threads.discard(threading.current_thread())

    def _embed_job(self, job: VertexJob) -> None:
        uris = job.spec["inputConfig"]["gcsSource"]["uris"]
        total_bytes = 0
        for uri in uris:
            size = self.storage.size(uri)
            if size is None:
                raise ApiError(400, f"The input {uri} does not exist.", status="NOT_FOUND")
            total_bytes += size
        if total_bytes > MAX_INPUT_BYTES:
            raise ApiError(400, f"The input is {total_bytes} bytes; a job takes at most {MAX_INPUT_BYTES}.")
        rows = sum(1 for uri in uris for line in self.storage.lines(uri) if line.strip())
        if rows > self.max_rows:
            raise ApiError(400, f"The input has {rows} rows; a job takes at most {self.max_rows}.")
        prefix = job.spec["outputConfig"]["gcsDestination"]["outputUriPrefix"]
        stamp = rfc3339(job.create_time)
        directory = f"{prefix.rstrip('/')}/prediction-model-{stamp}"
        with self.lock:
            job.total, job.output_directory = rows, directory
        part = Path(tempfile.mkstemp(prefix=f"vertex-{job.id}-", suffix=".jsonl", dir=self.work_dir)[1])
        stopped = False
        try:
            with part.open("wb") as out:
                try:
                    window: list[bytes] = []
                    for uri in uris:
                        for line in self.storage.lines(uri):
                            if line.strip():
                                window.append(line)
                            if len(window) >= _WINDOW:
                                self._window(job, window, out)
                                window = []
                    if window:
                        self._window(job, window, out)
                except _Stopped:
                    stopped = True
            if job.deleted or self._stopping.is_set():
                return
            self.storage.upload(f"{directory}/predictions.jsonl", part)  # completed rows, also when stopped
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        if stopped:
            self._end(job, JobState.CANCELLED)
        else:
            self._end(job, JobState.PARTIALLY_SUCCEEDED if job.failed else JobState.SUCCEEDED)

    def _check(self, job: VertexJob) -> None:
        if job.stop.is_set() or self._stopping.is_set():
            raise _Stopped

    def _window(self, job: VertexJob, lines: list[bytes], out: Any) -> None:
        """Embed one window of input lines and append their output lines."""
        self._check(job)
        parsed: list[tuple[Any, Any, EmbedItem | None, dict[str, Any] | None]] = []
        for line in lines:
            key, request, item, error = None, None, None, None
            try:
                obj = loads(line)
                if not isinstance(obj, dict):
                    raise ApiError(400, "an input line must be a JSON object.")
                key, request = obj.get("key"), obj.get("request")
                item = embed_request(request, job.model_id, "request", self.strict)
                if item.empty:
                    raise ApiError(400, EMPTY_CONTENT_MESSAGE)
                fault = self.faults.item_failure(item.text)
                if fault is not None:
                    error = _status(fault.status, fault.message)
            except ApiError as exc:
                error = _status(exc.status if exc.status in GRPC_CODES else "INVALID_ARGUMENT", exc.message)
            parsed.append((key, request, None if error else item, error))
        todo = [i for i, (_, _, item, _) in enumerate(parsed) if item is not None]
        items = [parsed[i][2] for i in todo]
        counts = self.tokens.count([item.counted_text for item in items]) if items else []  # type: ignore[union-attr]
        with self.lock:
            job.failed += len(parsed) - len(todo)
        vectors: dict[int, Any] = {}

        def before(count: int) -> None:
            self._check(job)
            delay = self.faults.seconds_per_item * count
            if delay and job.stop.wait(delay):
                raise _Stopped

        stopped = False
        try:
            for chunk, chunk_vectors in self.embedder.embed_items(items, self.model_batch_size, before,  # type: ignore[arg-type]
                                                                  guard=self._slots):
                for position, vector in zip(chunk, chunk_vectors, strict=True):
                    vectors[todo[position]] = (vector, counts[position])
                with self.lock:
                    job.succeeded += len(chunk)
                    job.update_time = time.time()
        except _Stopped:
            stopped = True  # the rows done so far are written, as Vertex AI exports a stopped job's rows
        for i, (key, request, _, error) in enumerate(parsed):
            if error is None and i not in vectors:
                continue
            row: dict[str, Any] = {} if key is None else {"key": key}
            if request is not None:
                row["request"] = request
            if error is not None:
                row["status"] = _status_text(error)
            else:
                vector, count = vectors[i]
                row["response"] = {"embedding": {"values": vector}, "tokenCount": str(count)}
            out.write(dumps(row) + b"\n")
        if stopped:
            raise _Stopped


def _status(name: str, message: str) -> dict[str, Any]:
    return {"code": GRPC_CODES[name], "message": message}


_HTTP_REASON = {3: (400, "Bad Request"), 5: (404, "Not Found"), 7: (403, "Forbidden"), 8: (429, "Too Many Requests"),
                13: (500, "Internal Server Error"), 14: (503, "Service Unavailable")}
_NAMES = {code: name for name, code in GRPC_CODES.items()}


def _status_text(status: dict[str, Any]) -> str:
    """A failed row's `status` as Vertex AI's Gemini batch output writes it (a reason, then the JSON error
    body); the exact form is not confirmed by a primary source (VERTEX.md, Fidelity)."""
    http, reason = _HTTP_REASON.get(status["code"], (500, "Internal Server Error"))
    body = {"error": {"code": http, "message": status["message"], "status": _NAMES.get(status["code"], "UNKNOWN")}}
    return f"{reason}: {dumps(body).decode()}"
