"""The background runner, in process, over a FakeEncoder: ordering, progress, cancel, outputs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infra.local.gemini_emulator.embedder import Embedder
from infra.local.gemini_emulator.engine import Engine, output_order
from infra.local.gemini_emulator.faults import BatchFate, Faults
from infra.local.gemini_emulator.schema import EmbedItem, InlineRequest
from infra.local.gemini_emulator.store import Batch, FileRecord, State, Store
from infra.local.gemini_emulator.wire import new_id
from tests.emulator.emulator_helpers import FakeEncoder, wait_for

MODEL = "models/gemini-embedding-001"


class Rig:
    def __init__(self, tmp_path: Path, workers: int = 1, model_batch_size: int = 4) -> None:
        self.encoder = FakeEncoder()
        self.store = Store(tmp_path)
        self.faults = Faults()
        self.embedder = Embedder(lambda: self.encoder, cache_entries=1000)
        self.engine = Engine(
            self.store,
            self.embedder,
            self.faults,
            workers=workers,
            model_batch_size=model_batch_size,
            window_size=8,
        )

    def add(self, priority: int = 0, fate: BatchFate | None = None, **source: object) -> Batch:
        """A queued batch over `source`: `input_file=`, or `inline=` with its `request_count=`."""
        batch = Batch(
            id=new_id(36),
            model=MODEL,
            display_name="t",
            priority=priority,
            seq=self.store.next_seq(),
            fate=fate or BatchFate(),
            not_before=0.0,
            **source,
        )
        self.store.add_batch(batch)
        return batch

    def inline(
        self, texts: list[str], priority: int = 0, dims: int = 3072, fate: BatchFate | None = None
    ) -> Batch:
        requests = [InlineRequest({"key": str(i)}, EmbedItem(t, dims)) for i, t in enumerate(texts)]
        return self.add(priority, fate, inline=requests, request_count=len(texts))

    def done(self, batch: Batch, timeout: float = 10.0) -> Batch:
        wait_for(lambda: batch.state in State.TERMINAL, timeout, f"{batch.name} to end")
        return batch

    def expected(self, text: str) -> np.ndarray:
        return self.embedder.embed([text])[0]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    made.engine.start()
    yield made
    made.engine.stop()


def test_higher_priority_first_then_older_first(rig: Rig):
    rig.faults.replace({"hold_queue": True})
    low = rig.inline(["a"], priority=-1)
    mid = rig.inline(["b"], priority=0)
    high_old = rig.inline(["c"], priority=5)
    high_new = rig.inline(["d"], priority=5)
    time.sleep(0.05)  # give the worker a chance to (wrongly) start something while held
    assert rig.store.started == []
    rig.faults.clear()
    rig.engine.notify()
    for batch in (low, mid, high_old, high_new):
        rig.done(batch)
    assert rig.store.started == [high_old.name, high_new.name, mid.name, low.name]


def test_items_run_in_model_batches_sorted_by_length_and_stats_add_up(rig: Rig):
    texts = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8, 4, 6, 10)]
    batch = rig.done(rig.inline(texts))
    assert batch.state == State.SUCCEEDED and (batch.succeeded, batch.failed) == (10, 0)
    sizes = [len(call) for call in rig.encoder.calls]
    assert sizes == [4, 4, 4, 4, 2] or sum(sizes) == 10  # windows of 8: (4, 4) then (2)
    assert max(sizes) <= 4
    for call in rig.encoder.calls:
        assert [len(t) for t in call] == sorted(len(t) for t in call)
    op = batch.operation()
    assert op["metadata"]["batchStats"] == {"requestCount": "10", "successfulRequestCount": "10"}


def test_inline_results_are_shuffled_deterministically_but_map_by_metadata(rig: Rig):
    texts = [f"text {i}" for i in range(12)]
    batch = rig.done(rig.inline(texts, dims=256))
    keys = [m["key"] for m in batch.result_metadata]
    assert sorted(keys, key=int) == [str(i) for i in range(12)]
    assert keys != [str(i) for i in range(12)]
    assert keys == [str(i) for i in output_order(12, 5)]
    for metadata, result in zip(batch.result_metadata, batch.results, strict=True):
        expected = rig.expected(texts[int(metadata["key"])])[:256]
        np.testing.assert_allclose(result.vector, expected, atol=1e-6)
        assert result.vector.shape == (256,) and np.linalg.norm(result.vector) < 1.0


def test_small_inline_batches_keep_their_order():
    assert output_order(5, 5) == [0, 1, 2, 3, 4]
    assert output_order(6, 5) != list(range(6)) and sorted(output_order(6, 5)) == list(range(6))
    assert output_order(300, 5) == output_order(300, 5)


def test_empty_and_injected_failures_fail_items_not_the_batch(rig: Rig):
    rig.faults.replace({"fail_texts_containing": "BAD"})
    batch = rig.done(rig.inline(["fine", "", "a BAD one", "also fine"]))
    assert batch.state == State.SUCCEEDED and (batch.succeeded, batch.failed) == (2, 2)
    by_key = dict(zip((m["key"] for m in batch.result_metadata), batch.results, strict=True))
    assert by_key["1"].error["status"] == "INVALID_ARGUMENT" and by_key["1"].error["code"] == 3
    assert by_key["2"].error["status"] == "INTERNAL" and "BAD" in by_key["2"].error["message"]
    assert by_key["0"].vector is not None and by_key["3"].vector is not None


def test_cancel_stops_a_running_batch_at_the_next_model_batch(rig: Rig):
    rig.faults.replace({"seconds_per_item": 0.02})
    batch = rig.inline([f"t{i}" for i in range(200)])
    wait_for(lambda: batch.succeeded >= 4, 10, "some progress")
    rig.store.cancel_batch(batch.id)
    rig.done(batch)
    assert batch.state == State.CANCELLED and batch.end_time is not None
    assert 4 <= batch.succeeded < 200
    calls = len(rig.encoder.calls)
    time.sleep(0.1)
    assert len(rig.encoder.calls) == calls  # nothing ran after the cancel
    assert "output" not in batch.operation()["metadata"]


def test_cancel_of_a_pending_batch_is_immediate(rig: Rig):
    rig.faults.replace({"hold_queue": True})
    batch = rig.inline(["a"])
    rig.store.cancel_batch(batch.id)
    assert batch.state == State.CANCELLED
    rig.faults.clear()
    rig.engine.notify()
    time.sleep(0.05)
    assert batch.state == State.CANCELLED and rig.encoder.calls == []


def test_injected_fates_end_batches_without_running_them(rig: Rig):
    expired = rig.done(rig.inline(["a"], fate=BatchFate(expire=True)))
    failed = rig.done(rig.inline(["b"], fate=BatchFate(fail=True)))
    assert expired.state == State.EXPIRED and expired.error is None and expired.results is None
    assert failed.state == State.FAILED and failed.error["code"] == 13
    assert rig.encoder.calls == []
    op = failed.operation()
    assert op["done"] is True and op["error"]["message"] and "response" not in op


def test_pending_seconds_hold_a_batch_back(rig: Rig):
    batch = rig.inline(["a"])
    batch.not_before = time.time() + 0.3
    time.sleep(0.1)
    assert batch.state == State.PENDING
    rig.done(batch)
    assert batch.state == State.SUCCEEDED


def test_the_same_text_is_encoded_once(rig: Rig):
    rig.done(rig.inline(["same", "same", "other"]))
    rig.done(rig.inline(["same"]))
    encoded = [t for call in rig.encoder.calls for t in call]
    assert sorted(encoded) == ["other", "same"]
    assert rig.embedder.cache_hits >= 1


def _input_file(rig: Rig, lines: list[str]) -> str:
    file_id = rig.store.new_file_id()
    path = rig.store.files_dir / f"{file_id}.bin"
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    rig.store.add_file(
        FileRecord(
            file_id, path, "application/jsonl", len(data), hashlib.sha256(data).hexdigest(), "UPLOADED"
        )
    )
    return f"files/{file_id}"


def test_file_batches_write_a_responses_file_in_input_order(rig: Rig):
    good = [
        json.dumps(
            {
                "key": f"k{i}",
                "request": {"content": {"parts": [{"text": f"doc {i}"}]}, "output_dimensionality": 128},
            }
        )
        for i in range(11)
    ]
    lines = [
        *good[:5],
        "{not json",
        json.dumps({"request": {"content": {"parts": [{"text": "no key"}]}}}),
        json.dumps({"key": "bad-field", "request": {"contents": []}}),
        "",
        json.dumps({"key": "empty", "request": {"content": {"parts": [{"text": ""}]}}}),
        *good[5:],
    ]
    batch = rig.add(input_file=_input_file(rig, lines))
    rig.done(batch)
    assert batch.state == State.SUCCEEDED, batch.error
    assert (batch.request_count, batch.succeeded, batch.failed) == (15, 11, 4)
    record = rig.store.file(batch.responses_file.removeprefix("files/"))
    assert record.source == "GENERATED"
    out = [json.loads(line) for line in record.path.read_text().splitlines()]
    assert [o.get("key") for o in out] == [
        *(f"k{i}" for i in range(5)),
        None,
        None,
        "bad-field",
        "empty",
        *(f"k{i}" for i in range(5, 11)),
    ]
    assert "Invalid JSON" in out[5]["error"]["message"] and "key is required" in out[6]["error"]["message"]
    assert 'Unknown name "contents"' in out[7]["error"]["message"]
    assert out[8]["error"]["status"] == "INVALID_ARGUMENT"
    vector = np.array(out[0]["response"]["embedding"]["values"], dtype=np.float32)
    np.testing.assert_allclose(vector, rig.expected("doc 0")[:128], atol=1e-6)
    assert record.size_bytes == record.path.stat().st_size
    assert hashlib.sha256(record.path.read_bytes()).hexdigest() == record.sha256_hex


def test_a_deleted_input_file_fails_the_batch(rig: Rig):
    rig.faults.replace({"hold_queue": True})
    name = _input_file(rig, [json.dumps({"key": "a", "request": {"content": {"parts": [{"text": "x"}]}}})])
    batch = rig.add(input_file=name)
    rig.store.delete_file(name.removeprefix("files/"))
    rig.faults.clear()
    rig.engine.notify()
    rig.done(batch)
    assert batch.state == State.FAILED and batch.error["status"] == "NOT_FOUND"


def test_delete_and_reset_stop_running_batches_quietly(rig: Rig):
    rig.faults.replace({"seconds_per_item": 0.02})
    batch = rig.inline([f"t{i}" for i in range(100)])
    wait_for(lambda: batch.state == State.RUNNING, 5, "start")
    rig.store.delete_batch(batch.id)
    wait_for(lambda: not rig.engine._threads[0].is_alive() or batch.stop.is_set(), 5, "stop flag")
    other = rig.inline([f"u{i}" for i in range(100)])
    wait_for(lambda: other.state == State.RUNNING, 5, "second start")
    assert batch.state == State.RUNNING  # a deleted batch is gone, never re-rendered
    rig.store.reset()
    assert rig.store.batches == {} and other.deleted


def test_items_of_different_sizes_share_a_model_batch(rig: Rig):
    requests = [InlineRequest({"key": str(d)}, EmbedItem("same text", d)) for d in (128, 3072, 768)]
    batch = rig.add(inline=requests, request_count=3)
    rig.done(batch)
    full = rig.expected("same text")
    vectors = {m["key"]: r.vector for m, r in zip(batch.result_metadata, batch.results, strict=True)}
    for dims in (128, 3072, 768):
        assert vectors[str(dims)].shape == (dims,) and vectors[str(dims)].flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(vectors[str(dims)], full[:dims], atol=1e-7)
    assert np.linalg.norm(vectors["3072"]) == pytest.approx(1.0, abs=1e-6)
