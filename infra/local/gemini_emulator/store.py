"""In-memory registry of batches, files and upload sessions; file bytes live on disk.

One re-entrant lock guards everything; holders do only bookkeeping under it (no model runs, no
disk I/O beyond unlink). Resources are rendered in the live API's proto3 JSON shape: lowerCamelCase,
int64 as strings, and fields at their default value (false, 0, empty lists) omitted, unless the
store was built with `emit_defaults=True`.

Quotas: a batch is admitted by the `Ledger` under the store's lock as it is added (its tokens and its
place count while it is PENDING or RUNNING) and released when it ends or is deleted; file bytes count
from upload to delete. `on_batch_end` is called, outside the lock, once per batch that reaches a
terminal state (not for deletes or resets).
"""

from __future__ import annotations

import base64
import contextlib
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .faults import BatchFate
from .quotas import Ledger
from .schema import InlineRequest
from .wire import ApiError, new_id, page_token, parse_page_token, rfc3339

__all__ = [
    "EMBED_BATCH_TYPE",
    "EMBED_OUTPUT_TYPE",
    "MAX_FILE_BYTES",
    "Batch",
    "FileRecord",
    "ItemResult",
    "State",
    "Store",
    "UploadSession",
]

EMBED_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatch"
EMBED_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatchOutput"
MAX_FILE_BYTES = 2 * 1024**3
FILE_TTL_SECONDS = 48 * 3600
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000


class State:
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"
    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})


@dataclass
class ItemResult:
    """One item's outcome: a (possibly truncated) vector, or a google.rpc.Status."""

    vector: np.ndarray | None = None
    error: dict[str, Any] | None = None
    tokens: int | None = None  # reported as response.tokenCount when the emulator is told to

    def response(self) -> dict[str, Any]:
        """The item's `response` object (for a result with a vector)."""
        out: dict[str, Any] = {"embedding": {"values": self.vector}}
        if self.tokens:
            out["tokenCount"] = str(self.tokens)
        return out


@dataclass
class FileRecord:
    id: str
    path: Path
    mime_type: str
    size_bytes: int
    sha256_hex: str
    source: str  # UPLOADED | GENERATED
    display_name: str | None = None
    create_time: float = field(default_factory=time.time)
    seq: int = 0
    token_count: int | None = None  # of its request lines, counted once, when a batch first needs it

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def resource(self, base_url: str, version: str = "v1beta") -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.display_name:
            out["displayName"] = self.display_name
        out["mimeType"] = self.mime_type
        if self.size_bytes:
            out["sizeBytes"] = str(self.size_bytes)
        out["createTime"] = rfc3339(self.create_time)
        out["updateTime"] = rfc3339(self.create_time)
        out["expirationTime"] = rfc3339(self.create_time + FILE_TTL_SECONDS)
        # As the live API shows it: base64 of the hex digest.
        out["sha256Hash"] = base64.b64encode(self.sha256_hex.encode()).decode()
        out["uri"] = f"{base_url}/{version}/files/{self.id}"
        if self.source == "GENERATED":
            out["downloadUri"] = f"{base_url}/download/{version}/files/{self.id}:download?alt=media"
        out["state"] = "ACTIVE"
        out["source"] = self.source
        return out


@dataclass
class UploadSession:
    token: str
    file_id: str
    path: Path
    mime_type: str
    declared_size: int | None
    display_name: str | None
    hasher: Any
    received: int = 0
    finished: bool = False
    busy: bool = False
    reserved: int = 0  # storage bytes the ledger holds for this upload


@dataclass
class Batch:
    id: str
    model: str
    display_name: str
    priority: int
    seq: int
    fate: BatchFate
    not_before: float
    inline: list[InlineRequest] | None = None
    input_file: str | None = None
    create_time: float = field(default_factory=time.time)
    update_time: float = 0.0
    end_time: float | None = None
    state: str = State.PENDING
    request_count: int = 0
    succeeded: int = 0
    failed: int = 0
    results: list[ItemResult] | None = None  # inline output, in output order
    result_metadata: list[Any] | None = None
    responses_file: str | None = None
    error: dict[str, Any] | None = None
    deleted: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    tokens: int = 0  # enqueued tokens, counted at create (a file batch under no limit: just after)
    admitted: bool = False  # its place and tokens are held by the ledger

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def done(self) -> bool:
        return self.state in State.TERMINAL

    def _output(self) -> dict[str, Any] | None:
        if self.state != State.SUCCEEDED:
            return None
        if self.responses_file is not None:
            return {"responsesFile": self.responses_file}
        entries = []
        for metadata, result in zip(self.result_metadata or [], self.results or [], strict=True):
            entry: dict[str, Any] = {}
            if metadata is not None:
                entry["metadata"] = metadata
            if result.error is not None:
                entry["error"] = result.error
            else:
                entry["response"] = result.response()
            entries.append(entry)
        return {"inlinedResponses": {"inlinedResponses": entries}} if entries else {"inlinedResponses": {}}

    def operation(self, emit_defaults: bool = False) -> dict[str, Any]:
        """The google.longrunning.Operation the API returns for this batch."""

        def put(target: dict[str, Any], key: str, value: Any, default: Any) -> None:
            if emit_defaults or value != default:
                target[key] = value

        stats: dict[str, Any] = {}
        pending = max(self.request_count - self.succeeded - self.failed, 0)
        put(stats, "requestCount", str(self.request_count), "0")
        put(stats, "successfulRequestCount", str(self.succeeded), "0")
        put(stats, "failedRequestCount", str(self.failed), "0")
        put(stats, "pendingRequestCount", str(pending), "0")
        metadata: dict[str, Any] = {
            "@type": EMBED_BATCH_TYPE,
            "name": self.name,
            "model": self.model,
            "displayName": self.display_name,
        }
        if self.input_file is not None:
            metadata["inputConfig"] = {"fileName": self.input_file}
        metadata["createTime"] = rfc3339(self.create_time)
        metadata["updateTime"] = rfc3339(self.update_time or self.create_time)
        if self.end_time is not None:
            metadata["endTime"] = rfc3339(self.end_time)
        put(metadata, "batchStats", stats, {})
        metadata["state"] = self.state
        put(metadata, "priority", str(self.priority), "0")
        output = self._output()
        if output is not None:
            metadata["output"] = output
        op: dict[str, Any] = {"name": self.name, "metadata": metadata}
        put(op, "done", self.done, False)
        if self.error is not None:
            op["error"] = self.error
        if output is not None:
            op["response"] = {"@type": EMBED_OUTPUT_TYPE, **output}
        return op


def _ordered(items: list[Any], order: str, token: str | None) -> tuple[list[Any], Any]:
    """`items` (each with .seq) in listing `order`, from the position `token` resumes at; and a function
    that makes the token resuming after a given item."""
    if order == "oldest":
        ordered = sorted(items, key=lambda x: x.seq)
        if token:
            after = parse_page_token(token, "after")
            ordered = [x for x in ordered if x.seq > after]
        return ordered, lambda last, _: page_token(last.seq, kind="after")
    if order == "random":
        seed, offset = parse_page_token(token, "random") if token else (random.randrange(2**31), 0)
        ordered = sorted(items, key=lambda x: x.seq)
        random.Random(seed).shuffle(ordered)
        return ordered[offset:], lambda _, shown: page_token(seed, offset + shown, kind="random")
    ordered = sorted(items, key=lambda x: x.seq, reverse=True)
    if token:
        below = parse_page_token(token)
        ordered = [x for x in ordered if x.seq < below]
    return ordered, lambda last, _: page_token(last.seq)


def _page(
    items: list[Any], page_size: int | None, token: str | None, order: str = "newest"
) -> tuple[list[Any], str | None]:
    """One page of `items` in `order` (newest first by default); the token resumes after its last item.
    A random order is a fixed shuffle per listing (its seed travels in the token)."""
    if page_size is not None and page_size < 0:
        raise ApiError(400, f"pageSize must not be negative, got {page_size}.")
    size = DEFAULT_PAGE_SIZE if not page_size else min(page_size, MAX_PAGE_SIZE)
    ordered, resume = _ordered(items, order, token)
    page = ordered[:size]
    next_token = resume(page[-1], len(page)) if len(ordered) > size else None
    return page, next_token


class Store:
    """Batches, files and upload sessions of one emulator process."""

    def __init__(self, data_dir: Path, emit_defaults: bool = False, ledger: Ledger | None = None) -> None:
        self.lock = threading.RLock()
        self.data_dir = data_dir
        self.files_dir = data_dir / "files"
        self.work_dir = data_dir / "work"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.emit_defaults = emit_defaults
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, FileRecord] = {}
        self.uploads: dict[str, UploadSession] = {}
        self.started: list[str] = []
        self.generation = 0
        self._seq = 0
        self.ledger = ledger or Ledger()
        self.on_change: Callable[[], None] = lambda: None
        self.on_batch_end: Callable[[Batch], None] = lambda batch: None

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    # -- batches ---------------------------------------------------------------------------------
    def add_batch(self, batch: Batch) -> None:
        """Admit (quota check and reservation, atomically) and queue `batch`; a refusal is the ledger's 429."""
        with self.lock:
            self.ledger.admit_batch(batch.model, batch.tokens)
            batch.admitted = True
            self.batches[batch.id] = batch
        self.on_change()

    def _release(self, batch: Batch) -> None:
        if batch.admitted:
            batch.admitted = False
            self.ledger.release_batch(batch.model, batch.tokens)

    def end_batch(self, batch: Batch, state: str, error: dict[str, Any] | None = None) -> bool:
        """Move a live batch to terminal `state` and free its quota; False if it had ended or was deleted."""
        with self.lock:
            if batch.deleted or batch.state in State.TERMINAL:
                return False
            batch.state = state
            batch.error = error
            batch.end_time = batch.update_time = time.time()
            self._release(batch)
        self.on_batch_end(batch)
        return True

    def add_batch_tokens(self, batch: Batch, tokens: int) -> None:
        """Tokens of a live batch counted after its create; a batch that has ended keeps what it had."""
        with self.lock:
            if batch.admitted:
                batch.tokens += tokens
                self.ledger.add_tokens(batch.model, tokens)

    def running_count(self) -> int:
        with self.lock:
            return sum(1 for b in self.batches.values() if b.state == State.RUNNING)

    def batch(self, batch_id: str) -> Batch:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None or batch.deleted:
                raise ApiError(404, "Requested entity was not found.")
            return batch

    def list_batches(
        self, page_size: int | None, token: str | None, order: str = "newest"
    ) -> tuple[list[Batch], str | None]:
        with self.lock:
            return _page([b for b in self.batches.values() if not b.deleted], page_size, token, order)

    def cancel_batch(self, batch_id: str) -> Batch:
        """Best effort, idempotent: PENDING ends CANCELLED now, RUNNING at its next model batch."""
        with self.lock:
            batch = self.batch(batch_id)
            batch.stop.set()  # from here on no worker claims it
            pending = batch.state == State.PENDING
        if pending:
            self.end_batch(batch, State.CANCELLED)
        self.on_change()
        return batch

    def delete_batch(self, batch_id: str) -> None:
        with self.lock:
            batch = self.batch(batch_id)
            self._release(batch)
            batch.deleted = True
            batch.stop.set()
            del self.batches[batch_id]

    # -- files ---------------------------------------------------------------------------------
    def new_file_id(self, wanted: str | None = None) -> str:
        with self.lock:
            if wanted is not None:
                if wanted in self.files or any(s.file_id == wanted for s in self.uploads.values()):
                    raise ApiError(409, f"File files/{wanted} already exists.", status="ALREADY_EXISTS")
                return wanted
            while True:
                candidate = new_id(12)
                if candidate not in self.files:
                    return candidate

    def add_file(self, record: FileRecord, *, reserved: bool = False) -> FileRecord:
        """Register a stored file; its bytes count towards storage (already, if `reserved` by its upload)."""
        with self.lock:
            if not reserved:
                self.ledger.add_bytes(record.size_bytes)
            record.seq = self.next_seq()
            self.files[record.id] = record
            return record

    def file(self, file_id: str) -> FileRecord:
        with self.lock:
            record = self.files.get(file_id)
            if record is None:
                # What the live Files API answers for a missing (or someone else's) file.
                raise ApiError(
                    403, f"You do not have permission to access the File {file_id} or it may not exist."
                )
            return record

    def list_files(self, page_size: int | None, token: str | None) -> tuple[list[FileRecord], str | None]:
        with self.lock:
            return _page(list(self.files.values()), page_size, token)

    def delete_file(self, file_id: str) -> None:
        with self.lock:
            record = self.file(file_id)
            del self.files[file_id]
            self.ledger.release_bytes(record.size_bytes)
        with contextlib.suppress(FileNotFoundError):
            record.path.unlink()

    # -- everything ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all batches, files and sessions (running batches stop) and delete their bytes."""
        with self.lock:
            for batch in self.batches.values():
                batch.deleted = True
                batch.stop.set()
            self.batches.clear()
            self.files.clear()
            self.uploads.clear()
            self.started.clear()
            self.ledger.clear()
            self.generation += 1
            for folder in (self.files_dir, self.work_dir):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True, exist_ok=True)
        self.on_change()
