"""The Gemini client and its provider adapter against the local Gemini API emulator.

Uses the `gemini_emulator` fixture (tests/integration/conftest.py): `.base_url`, `.api_key`,
`.set_faults(dict)` and `.clear_faults()` (PUT/DELETE {base_url}/_emulator/faults). Waiting is always
for a condition (`await_completion` polls the batch), never a fixed sleep.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.adapters.gemini_provider import GeminiBatchProvider
from shared.gemini import (
    BatchNotCompleteError,
    BatchState,
    EmbeddingBatch,
    EmbedItem,
    GeminiClient,
    RetryableGeminiError,
    cosine_similarity,
    normalize,
)
from shared.gemini.models import parse_result
from shared.ports import ProviderState

pytestmark = pytest.mark.integration

POLL = 0.2  # seconds between polls: the emulator is fast
DIMS = 256


class RecordingSleep:
    """Really sleeps (the emulator runs in real time), and records what the client asked for."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def gemini(gemini_emulator, sleeps: RecordingSleep) -> Iterator[GeminiClient]:
    with GeminiClient(gemini_emulator.api_key, base_url=gemini_emulator.base_url, sleep=sleeps) as client:
        yield client


def unique(label: str) -> str:
    return f"{label} [{uuid.uuid4().hex[:12]}]"


def wait(client: GeminiClient, batch: EmbeddingBatch | str, timeout: float = 120.0) -> EmbeddingBatch:
    name = batch if isinstance(batch, str) else batch.name
    return client.await_completion(name, poll_interval=POLL, timeout=timeout)


def batches_named(client: GeminiClient, display_name: str) -> list[EmbeddingBatch]:
    return [b for b in client.iter_batches(page_size=100) if b.display_name == display_name]


# -- the happy paths ------------------------------------------------------------------------------------


def test_inline_batch_results_are_mapped_by_key(gemini: GeminiClient):
    texts = [f"note {i}: the {'quick ' * (i % 4)}brown fox" for i in range(24)] + [
        "the same text",
        "the same text",
    ]
    progress: list[float] = []
    batch = gemini.submit_embedding_batch(
        texts, display_name=unique("inline"), task_type="retrieval_document", output_dimensionality=DIMS
    )
    done = gemini.await_completion(
        batch.name,
        poll_interval=POLL,
        timeout=120,
        on_progress=lambda b: progress.append(b.progress_percentage),
    )
    assert done.state is BatchState.SUCCEEDED and done.status == "completed"
    assert (
        done.request_count,
        done.batch_stats.successful_request_count,
        done.batch_stats.failed_request_count,
    ) == (26, 26, 0)
    assert (done.progress_percentage, done.success_rate) == (100.0, 100.0)
    assert progress[-1] == 100.0 and progress == sorted(progress)

    embeddings = gemini.get_embeddings(done)
    assert set(embeddings) == {str(i) for i in range(len(texts))}
    assert {len(v) for v in embeddings.values()} == {DIMS}
    # Equal texts under different keys get equal vectors, different texts do not: keys are honoured.
    assert cosine_similarity(embeddings["24"], embeddings["25"]) == pytest.approx(1.0, abs=1e-5)
    assert cosine_similarity(embeddings["0"], embeddings["24"]) < 0.999
    # The batch's vector for a key is the interactive vector of that key's text.
    for key in ("3", "17"):
        interactive = gemini.embed_content(
            texts[int(key)], task_type="RETRIEVAL_DOCUMENT", output_dimensionality=DIMS
        )
        assert cosine_similarity(embeddings[key], interactive) == pytest.approx(1.0, abs=1e-4)
    unit = normalize([embeddings[k] for k in sorted(embeddings)])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_file_batch_of_ten_thousand_items(gemini_emulator):
    texts = [f"item {i}" for i in range(10_000)]
    with GeminiClient(
        gemini_emulator.api_key, base_url=gemini_emulator.base_url, inline_limit_bytes=1
    ) as client:
        batch = client.submit_embedding_batch(
            [EmbedItem(f"id-{i}", t) for i, t in enumerate(texts)],
            display_name=unique("file 10k"),
            output_dimensionality=128,
        )
        assert batch.request_count in (0, 10_000)  # the API may count before or after reading the file
        done = wait(client, batch, timeout=900)
        assert done.state is BatchState.SUCCEEDED, done.error
        assert done.responses_file and done.inlined_responses is None
        assert done.batch_stats.successful_request_count == 10_000

        keys: set[str] = set()
        for result in client.iter_results(done):
            assert result.ok and len(result.values) == 128
            keys.add(result.key)
        assert keys == {f"id-{i}" for i in range(10_000)}

        sample = client.get_embeddings(done)
        for i in (0, 4242, 9999):
            assert cosine_similarity(
                sample[f"id-{i}"], client.embed_content(texts[i], output_dimensionality=128)
            ) == pytest.approx(1.0, abs=1e-4)


def test_the_responses_file_lines_parse(gemini_emulator):
    with GeminiClient(
        gemini_emulator.api_key, base_url=gemini_emulator.base_url, inline_limit_bytes=1
    ) as client:
        done = wait(client, client.submit_embedding_batch(["a", "b", "c"], display_name=unique("format")))
        raw = b"".join(client.download_file(done.responses_file)).decode()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert sorted(parse_result(line, i).key for i, line in enumerate(lines)) == ["0", "1", "2"]


# -- terminal states without results -----------------------------------------------------------------------


def test_cancel_a_pending_batch(gemini_emulator, gemini: GeminiClient):
    gemini_emulator.set_faults({"pending_seconds": 60})
    batch = gemini.submit_embedding_batch(["to be cancelled"], display_name=unique("cancel"))
    gemini.cancel_batch(batch.name)
    done = wait(gemini, batch, timeout=30)
    assert (done.state, done.status) == (BatchState.CANCELLED, "cancelled")
    with pytest.raises(BatchNotCompleteError, match="current state: cancelled"):
        gemini.iter_results(done)
    GeminiBatchProvider(gemini).cancel_batch(batch.name)  # cancelling a finished batch is a no-op


def test_expired_batch(gemini_emulator, gemini: GeminiClient):
    gemini_emulator.set_faults({"expire_batches": True})
    done = wait(gemini, gemini.submit_embedding_batch(["too late"], display_name=unique("expire")))
    assert (done.state, done.status) == (BatchState.EXPIRED, "expired")
    with pytest.raises(BatchNotCompleteError):
        gemini.get_embeddings(done)


def test_failed_batch(gemini_emulator, gemini: GeminiClient):
    gemini_emulator.set_faults({"fail_batches": True})
    done = wait(gemini, gemini.submit_embedding_batch(["doomed"], display_name=unique("fail")))
    assert (done.state, done.status) == (BatchState.FAILED, "failed")
    assert GeminiBatchProvider(gemini).get_batch(done.name).state is ProviderState.FAILED


# -- partial failure and resubmission ------------------------------------------------------------------------


def test_failed_items_are_reported_and_resubmitted(gemini_emulator, gemini: GeminiClient):
    items = [EmbedItem(f"doc-{i}", f"{'POISON ' if i % 4 == 0 else ''}paragraph {i}") for i in range(12)]
    gemini_emulator.set_faults({"fail_texts_containing": "POISON"})
    done = wait(gemini, gemini.submit_embedding_batch(items, display_name=unique("partial")))
    assert done.state is BatchState.SUCCEEDED
    assert (done.batch_stats.successful_request_count, done.batch_stats.failed_request_count) == (9, 3)
    assert done.success_rate == pytest.approx(75.0)
    failed = gemini.failed_items(done)
    assert sorted(f.key for f in failed) == ["doc-0", "doc-4", "doc-8"]
    assert all(f.error is not None and f.error.message for f in failed)
    assert set(gemini.get_embeddings(done)) == {f"doc-{i}" for i in range(12) if i % 4}

    gemini_emulator.clear_faults()
    by_key = {item.key: item for item in items}
    retry = wait(
        gemini,
        gemini.submit_embedding_batch([by_key[f.key] for f in failed], display_name=unique("partial retry")),
    )
    assert set(gemini.get_embeddings(retry)) == {"doc-0", "doc-4", "doc-8"}


def test_items_failing_once_succeed_when_resubmitted(gemini_emulator, gemini: GeminiClient):
    gemini_emulator.set_faults({"item_failure_rate": 1.0, "item_failure_attempts": 1})
    texts = [f"flaky {i}" for i in range(8)]
    first = wait(gemini, gemini.submit_embedding_batch(texts, display_name=unique("flaky")))
    assert len(gemini.failed_items(first)) == 8
    second = wait(gemini, gemini.submit_embedding_batch(texts, display_name=unique("flaky again")))
    assert len(gemini.get_embeddings(second)) == 8


# -- faults on the wire -----------------------------------------------------------------------------------------


def test_create_429_is_retried_after_the_servers_delay(
    gemini_emulator, gemini: GeminiClient, sleeps: RecordingSleep
):
    gemini_emulator.set_faults({"create_429": {"count": 1, "retry_after_seconds": 1}})
    name = unique("quota")
    batch = gemini.submit_embedding_batch(["a"], display_name=name)
    assert sleeps.calls == [1.0]
    assert [b.name for b in batches_named(gemini, name)] == [batch.name]  # one try made one batch


def test_5xx_while_polling_and_downloading_is_retried(
    gemini_emulator, gemini: GeminiClient, sleeps: RecordingSleep
):
    batch = gemini.submit_embedding_batch(["a", "b"], display_name=unique("flaky wire"))
    gemini_emulator.set_faults({"http_5xx": {"count": 2, "status": 503, "path_contains": "batches/"}})
    assert gemini.get_batch(batch.name).name == batch.name
    assert len(sleeps.calls) == 2  # two backoffs, then the answer
    assert set(gemini.get_embeddings(wait(gemini, batch))) == {"0", "1"}

    with GeminiClient(
        gemini_emulator.api_key, base_url=gemini_emulator.base_url, inline_limit_bytes=1, sleep=sleeps
    ) as client:
        done = wait(client, client.submit_embedding_batch(["c", "d"], display_name=unique("flaky download")))
        gemini_emulator.set_faults({"http_5xx": {"count": 1, "status": 503, "path_contains": ":download"}})
        before = len(sleeps.calls)
        assert set(client.get_embeddings(done)) == {"0", "1"}
        assert len(sleeps.calls) == before + 1


def test_5xx_on_create_is_raised_not_retried(gemini_emulator, gemini: GeminiClient, sleeps: RecordingSleep):
    gemini_emulator.set_faults(
        {"http_5xx": {"count": 1, "status": 503, "path_contains": "asyncBatchEmbedContent"}}
    )
    name = unique("no duplicate")
    with pytest.raises(RetryableGeminiError) as caught:
        gemini.submit_embedding_batch(["a"], display_name=name)
    assert caught.value.status_code == 503 and sleeps.calls == []
    assert (
        len(batches_named(gemini, name)) <= 1
    )  # the caller recovers by display name, never by a second create


# -- the adapter ---------------------------------------------------------------------------------------------------


def test_provider_round_trip_through_a_file(gemini: GeminiClient):
    from shared.domain.options import JobOptions
    from shared.ports import StagedItem

    provider = GeminiBatchProvider(gemini)
    asked_at = datetime.now(UTC)
    tag = f"[{uuid.uuid4().hex[:8]}/s0a1]"
    options = JobOptions(output_dimensionality=DIMS, priority=2)
    items = [StagedItem(key=f"r{i}", text=f"row {i}") for i in range(30)]
    file_name, size = provider.prepare_input(lambda: iter(items), options, f"requests {tag}")
    assert size > 0
    created = provider.create_batch(options=options, input_ref=file_name, display_name=f"embeddings {tag}", tag=tag)
    assert [b.name for b in provider.find_batches(tag, asked_at)] == [created.name]
    wait(gemini, created.name)
    batch = provider.get_batch(created.name)
    assert (batch.state, batch.total, batch.succeeded, batch.failed) == (ProviderState.SUCCEEDED, 30, 30, 0)
    results = {r.key: r for r in provider.iter_results(created.name)}
    assert set(results) == {f"r{i}" for i in range(30)}
    assert all(r.error is None and len(r.values) == DIMS for r in results.values())
    provider.delete_input(file_name)
    assert provider.delete_results(created.name) in (True, False)
    vectors = gemini.batch_embed_contents(
        ["row 7"], model="gemini-embedding-001", task_type="RETRIEVAL_DOCUMENT", output_dimensionality=DIMS
    )
    assert len(vectors) == 1 and len(vectors[0]) == DIMS
