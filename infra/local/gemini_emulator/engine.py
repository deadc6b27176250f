"""The background runner: worker threads that take PENDING batches and embed their items.

Guarantees:
- Order: among startable PENDING batches, higher `priority` first, then older first.
- Progress: items are embedded in model batches (sorted by length within a window to cut padding);
  batchStats move after every model batch; a per-item failure never fails the batch.
- Cancel stops a RUNNING batch before its next model batch (state CANCELLED, no output); delete
  and reset stop it silently. Injected fates (expire, fail) end a batch without running it.
- Inline outputs of more than `shuffle_above` items come back in a deterministic order that is not
  the input order; responses files keep the input order (both are allowed by the live API).
- Concurrency: at most `workers` model batches run at once, whatever runs them. A batch claimed while
  `seconds_per_item` is set (simulated time) runs on a thread of its own, so it waits out its simulated
  time without holding a worker: throughput grows with the batches in flight, as a real service's does.
  `max_running` (0: no cap) bounds the RUNNING batches, as a service's capacity would.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .embedder import Embedder
from .faults import Faults
from .schema import EMPTY_CONTENT_MESSAGE, EmbedItem, parse_file_line
from .store import Batch, FileRecord, ItemResult, State, Store
from .tokens import TokenCounter
from .wire import ApiError, dumps, loads, rpc_status

__all__ = ["Engine", "output_order"]

log = logging.getLogger("gemini_emulator")

_Work = tuple[EmbedItem | None, dict[str, Any] | None]


def output_order(count: int, shuffle_above: int) -> list[int]:
    """Input positions in output order: identity up to `shuffle_above` items, else a fixed shuffle."""
    identity = list(range(count))
    if count <= shuffle_above:
        return identity
    order = sorted(identity, key=lambda i: hashlib.blake2b(f"{count}:{i}".encode(), digest_size=8).digest())
    return order if order != identity else identity[::-1]


class _Stopped(Exception):
    """The batch was cancelled, deleted or reset, or the emulator is shutting down."""


class Engine:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        faults: Faults,
        *,
        workers: int = 2,
        model_batch_size: int = 32,
        window_size: int = 512,
        shuffle_above: int = 5,
        strict: bool = True,
        max_running: int = 0,
        token_counter: TokenCounter | None = None,
    ) -> None:
        """`token_counter` set: every embedded item reports its input tokens (response.tokenCount)."""
        self.store, self.embedder, self.faults = store, embedder, faults
        self.model_batch_size, self.window_size = model_batch_size, max(window_size, model_batch_size)
        self.shuffle_above, self.strict = shuffle_above, strict
        self.max_running, self.token_counter = max_running, token_counter
        self._model_slots = threading.BoundedSemaphore(workers)
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"emulator-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        self._timed: set[threading.Thread] = set()
        self._timed_lock = threading.Lock()
        store.on_change = self.notify

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self.store.lock:
            for batch in self.store.batches.values():
                batch.stop.set()
        self.notify()
        deadline = time.monotonic() + timeout
        with self._timed_lock:
            timed = list(self._timed)
        for thread in [*self._threads, *timed]:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- scheduling ------------------------------------------------------------------------------
    def _claim(self) -> tuple[Batch | None, float]:
        """The next batch to run, marked RUNNING; else (None, seconds until one may be ready)."""
        now = time.time()
        wait = 0.5
        if self.faults.hold_queue:
            return None, wait
        with self.store.lock:
            if self.max_running and self.store.running_count() >= self.max_running:
                return None, wait
            ready = []
            for batch in self.store.batches.values():
                if batch.state != State.PENDING or batch.deleted or batch.stop.is_set():
                    continue
                if batch.not_before > now:
                    wait = min(wait, batch.not_before - now)
                    continue
                ready.append(batch)
            if not ready:
                return None, max(wait, 0.01)
            batch = max(ready, key=lambda b: (b.priority, -b.seq))
            batch.state = State.RUNNING
            batch.update_time = now
            self.store.started.append(batch.name)
            return batch, 0.0

    def _loop(self) -> None:
        while not self._stopping.is_set():
            batch, wait = self._claim()
            if batch is None:
                with self._wake:
                    self._wake.wait(wait)
                continue
            if self.faults.seconds_per_item > 0:
                self._start_timed(batch)
            else:
                self._run(batch)

    def _start_timed(self, batch: Batch) -> None:
        """Run a simulated-time batch on a thread of its own (its waits hold no worker)."""

        def run() -> None:
            try:
                self._run(batch)
            finally:
                with self._timed_lock:
                    self._timed.discard(threading.current_thread())
                self.notify()  # a RUNNING place is free (max_running)

        thread = threading.Thread(target=run, name=f"emulator-timed-{batch.id[:8]}", daemon=True)
        with self._timed_lock:
            self._timed.add(thread)
        thread.start()

    def _finish(self, batch: Batch, state: str, error: dict[str, Any] | None = None) -> None:
        if self.store.end_batch(batch, state, error):
            log.info("%s %s (%d ok, %d failed)", batch.name, state, batch.succeeded, batch.failed)
            self.notify()

    def _run(self, batch: Batch) -> None:
        if batch.fate.expire:
            self._finish(batch, State.EXPIRED)
            return
        if batch.fate.fail:
            self._finish(
                batch, State.FAILED, rpc_status("INTERNAL", "The batch failed (injected by fail_batches).")
            )
            return
        try:
            if batch.inline is not None:
                self._run_inline(batch)
            else:
                self._run_file(batch)
        except _Stopped:
            if not batch.deleted and not self._stopping.is_set():
                self._finish(batch, State.CANCELLED)
        except ApiError as exc:
            self._finish(batch, State.FAILED, rpc_status(exc.status, exc.message))
        except Exception as exc:
            log.exception("%s failed", batch.name)
            self._finish(
                batch, State.FAILED, rpc_status("INTERNAL", f"Internal error: {type(exc).__name__}: {exc}")
            )

    # -- item processing -------------------------------------------------------------------------
    def _check(self, batch: Batch) -> None:
        if batch.stop.is_set() or self._stopping.is_set():
            raise _Stopped

    def _count(self, batch: Batch, ok: int = 0, failed: int = 0) -> None:
        with self.store.lock:
            batch.succeeded += ok
            batch.failed += failed
            batch.update_time = time.time()

    def _process(self, batch: Batch, work: list[_Work]) -> list[ItemResult]:
        """Results for one window of items, aligned with `work`; raises _Stopped when told to stop."""
        results: list[ItemResult | None] = [None] * len(work)
        todo: list[int] = []
        for i, (item, error) in enumerate(work):
            if error is None and item is not None:
                if item.empty:
                    error = rpc_status("INVALID_ARGUMENT", EMPTY_CONTENT_MESSAGE)
                else:
                    fault = self.faults.item_failure(item.text)
                    if fault is not None:
                        error = rpc_status(fault.status, fault.message)
            if error is not None:
                results[i] = ItemResult(error=error)
            else:
                todo.append(i)
        self._count(batch, failed=len(work) - len(todo))

        def before(count: int) -> None:  # each model batch: stop if told to, then the injected slowness
            self._check(batch)
            delay = self.faults.seconds_per_item * count
            if delay and batch.stop.wait(delay):
                raise _Stopped

        items: list[EmbedItem] = [work[i][0] for i in todo]  # type: ignore[misc]
        tokens = self.token_counter.count([i.counted_text for i in items]) if self.token_counter else None
        chunks = self.embedder.embed_items(items, self.model_batch_size, before, guard=self._model_slots)
        for chunk, vectors in chunks:
            for position, vector in zip(chunk, vectors, strict=True):
                count = tokens[position] if tokens is not None else None
                results[todo[position]] = ItemResult(vector=vector, tokens=count)
            self._count(batch, ok=len(chunk))
        self._check(batch)
        return results  # type: ignore[return-value]

    def _run_inline(self, batch: Batch) -> None:
        requests = batch.inline or []
        results: list[ItemResult] = []
        for start in range(0, len(requests), self.window_size):
            window = requests[start : start + self.window_size]
            results.extend(self._process(batch, [(r.item, None) for r in window]))
        order = output_order(len(requests), self.shuffle_above)
        with self.store.lock:
            batch.results = [results[i] for i in order]
            batch.result_metadata = [requests[i].metadata for i in order]
            batch.inline = []
        self._finish(batch, State.SUCCEEDED)

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield number, line

    def _parse_line(self, number: int, line: bytes, model: str) -> tuple[Any, _Work]:
        try:
            key, item = parse_file_line(loads(line), number, self.strict, model)
        except ApiError as exc:
            key = None
            with contextlib.suppress(ApiError, AttributeError, TypeError):
                key = loads(line).get("key")
            return key, (None, rpc_status("INVALID_ARGUMENT", exc.message))
        if key is None:
            return None, (None, rpc_status("INVALID_ARGUMENT", f"line {number}: key is required."))
        return key, (item, None)

    def _run_file(self, batch: Batch) -> None:
        assert batch.input_file is not None
        file_id = batch.input_file.removeprefix("files/")
        with self.store.lock:
            source = self.store.files.get(file_id)
            generation = self.store.generation
        if source is None or not source.path.exists():
            raise ApiError(400, f"The input file {batch.input_file} no longer exists.", status="NOT_FOUND")
        total = sum(1 for _ in self._lines(source.path))
        with self.store.lock:
            batch.request_count = total
            batch.update_time = time.time()
        out_id = self.store.new_file_id()
        part = self.store.work_dir / f"{out_id}.part"
        try:
            size, digest = self._write_responses(batch, source.path, part)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        final = self.store.files_dir / f"{out_id}.jsonl"
        with self.store.lock:
            if batch.deleted or self.store.generation != generation:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                return
            os.replace(part, final)
            record = FileRecord(
                id=out_id,
                path=final,
                mime_type="application/jsonl",
                size_bytes=size,
                sha256_hex=digest,
                source="GENERATED",
                display_name=f"{batch.name} responses",
            )
            self.store.add_file(record)
            batch.responses_file = record.name
        self._finish(batch, State.SUCCEEDED)

    def _write_responses(self, batch: Batch, source: Path, part: Path) -> tuple[int, str]:
        """Embed every line of `source`, writing one response line per request to `part`."""
        digest = hashlib.sha256()
        size = 0
        with part.open("wb") as out:
            window: list[tuple[Any, _Work]] = []

            def flush() -> None:
                nonlocal size
                results = self._process(batch, [w for _, w in window])
                for (key, _), result in zip(window, results, strict=True):
                    line: dict[str, Any] = {} if key is None else {"key": key}
                    if result.error is not None:
                        line["error"] = result.error
                    else:
                        line["response"] = result.response()
                    data = dumps(line) + b"\n"
                    out.write(data)
                    digest.update(data)
                    size += len(data)
                window.clear()

            for number, raw in self._lines(source):
                window.append(self._parse_line(number, raw, batch.model))
                if len(window) >= self.window_size:
                    flush()
            if window:
                flush()
        return size, digest.hexdigest()
