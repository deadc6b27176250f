"""GeminiBatchProvider: the port's contract over the client and the in-memory API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.adapters.gemini_provider import GeminiBatchProvider
from shared.domain.jobs import ErrorInfo
from shared.domain.options import JobOptions
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.gemini import GeminiClient
from shared.ports import ItemResult, ProviderBatch, ProviderState, StagedItem
from tests.unit.gemini.gemini_fakes import FakeGemini, error_response, vector_for

OPTIONS = JobOptions(provider="gemini", output_dimensionality=768)


@pytest.fixture
def provider(client: GeminiClient) -> GeminiBatchProvider:
    return GeminiBatchProvider(client)


def items(*texts: str, title: str | None = None) -> list[StagedItem]:
    return [StagedItem(key=f"k{i}", text=t, title=title) for i, t in enumerate(texts)]


def create(provider: GeminiBatchProvider, *texts: str, name: str = "d", options: JobOptions = OPTIONS) -> ProviderBatch:
    ref, _ = provider.prepare_input(lambda: iter(items(*(texts or ("a",)))), options, name)
    return provider.create_batch(options=options, input_ref=ref, display_name=name, tag=name)


def test_the_input_file_is_the_batch_apis_format(provider: GeminiBatchProvider, fake: FakeGemini):
    options = JobOptions(provider="gemini", task_type="RETRIEVAL_DOCUMENT", output_dimensionality=256)
    ref, size = provider.prepare_input(lambda: iter(items("x", "y", title="T")), options, "job-1 [job-1/s0a1]")
    content = fake.files[ref]["content"]
    assert len(content) == size
    lines = [json.loads(line) for line in content.splitlines()]
    assert lines[0] == {"key": "k0", "request": {
        "model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]},
        "outputDimensionality": 256, "taskType": "RETRIEVAL_DOCUMENT", "title": "T"}}
    query = JobOptions(provider="gemini", task_type="RETRIEVAL_QUERY")
    ref, _ = provider.prepare_input(lambda: iter(items("q", title="T")), query, "q")
    assert "title" not in json.loads(fake.files[ref]["content"])["request"], "a title only goes with RETRIEVAL_DOCUMENT"


def test_create_from_the_file_and_map_the_batch(provider: GeminiBatchProvider, fake: FakeGemini):
    batch = create(provider, "x", "y", "z", name="job-1 [job-1/s0a1]", options=OPTIONS.model_copy(update={"priority": 3}))
    assert (batch.state, batch.display_name, batch.total, batch.pending) == (ProviderState.PENDING, "job-1 [job-1/s0a1]", 3, 3)
    assert batch.create_time is not None and batch.create_time.tzinfo is not None
    body = json.loads(fake.requests_to(":asyncBatchEmbedContent")[-1].content)["batch"]
    assert body["priority"] == "3" and body["inputConfig"]["fileName"].startswith("files/")


def test_a_429_at_create_is_capacity_and_is_not_retried(provider: GeminiBatchProvider, fake: FakeGemini):
    ref, _ = provider.prepare_input(lambda: iter(items("a")), OPTIONS, "d")
    fake.faults.append(lambda r: error_response(429, "RESOURCE_EXHAUSTED", "enqueued tokens")
                       if r.url.path.endswith(":asyncBatchEmbedContent") else None)
    with pytest.raises(CapacityExhausted):
        provider.create_batch(options=OPTIONS, input_ref=ref, display_name="d", tag="d")
    assert len(fake.requests_to(":asyncBatchEmbedContent")) == 1, "the ledger waits for capacity, not the client"
    assert not fake.batches


def test_a_5xx_at_create_is_transient_and_never_retried(provider: GeminiBatchProvider, fake: FakeGemini):
    ref, _ = provider.prepare_input(lambda: iter(items("a")), OPTIONS, "d")
    fake.faults.append(lambda r: error_response(503, "UNAVAILABLE", "lost") if r.url.path.endswith(":asyncBatchEmbedContent") else None)
    with pytest.raises(TransientError) as caught:
        provider.create_batch(options=OPTIONS, input_ref=ref, display_name="d", tag="d")
    assert not isinstance(caught.value, CapacityExhausted)
    assert len(fake.requests_to(":asyncBatchEmbedContent")) == 1, "a 5xx may have made the batch: no second create"


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        ("BATCH_STATE_UNSPECIFIED", ProviderState.PENDING),
        ("BATCH_STATE_PENDING", ProviderState.PENDING),
        ("BATCH_STATE_RUNNING", ProviderState.RUNNING),
        ("BATCH_STATE_SUCCEEDED", ProviderState.SUCCEEDED),
        ("BATCH_STATE_FAILED", ProviderState.FAILED),
        ("BATCH_STATE_CANCELLED", ProviderState.CANCELLED),
        ("BATCH_STATE_EXPIRED", ProviderState.EXPIRED),
    ],
)
def test_get_batch_maps_every_state_and_the_counts(provider: GeminiBatchProvider, fake: FakeGemini, wire, state):
    name = create(provider).name
    fake.set_state(name, wire, request_count=10, successful_request_count=6, failed_request_count=3,
                   pending_request_count=1)
    batch = provider.get_batch(name)
    assert (batch.state, batch.total, batch.succeeded, batch.failed, batch.pending) == (state, 10, 6, 3, 1)


def test_a_failed_batch_carries_its_error(provider: GeminiBatchProvider, fake: FakeGemini):
    name = create(provider).name
    fake.set_state(name, "BATCH_STATE_FAILED")
    fake.batches[name]["error"] = {"code": 13, "message": "internal error"}
    assert provider.get_batch(name).error == ErrorInfo(code="INTERNAL", message="internal error")


def test_iter_results_maps_vectors_and_errors(provider: GeminiBatchProvider, fake: FakeGemini):
    name = create(provider, "aa", "bbb", "c").name
    fake.complete(name, failures={"k1": "too long"})
    results = {r.key: r for r in provider.iter_results(name)}
    assert results["k0"] == ItemResult(key="k0", values=vector_for("aa"))
    assert results["k2"].values == vector_for("c") and results["k2"].error is None
    assert results["k1"].values is None
    assert (results["k1"].error.code, results["k1"].error.message) == ("INVALID_ARGUMENT", "too long")


def test_iter_results_of_an_unfinished_batch_is_permanent(provider: GeminiBatchProvider):
    name = create(provider).name
    with pytest.raises(PermanentError):
        list(provider.iter_results(name))


@pytest.mark.parametrize("order", ["newest", "oldest", "random"])
def test_find_batches_reads_every_page_whatever_the_order(provider: GeminiBatchProvider, fake: FakeGemini, order):
    asked_at = fake.created_at
    wanted = create(provider, name="embeddings [job-7/s3a2]")
    for i in range(230):  # several pages
        create(provider, name=f"other-{i}")
    twin = create(provider, name="again [job-7/s3a2]")  # a second batch of the same attempt (a lost answer)
    fake.list_order = order
    found = provider.find_batches("[job-7/s3a2]", asked_at)
    assert sorted(b.name for b in found) == sorted([wanted.name, twin.name])
    assert provider.find_batches("[job-7/s3a1]", asked_at) == []
    assert len(fake.requests_to("/v1beta/batches")) >= 3


def test_find_batches_leaves_out_batches_older_than_asked(provider: GeminiBatchProvider, fake: FakeGemini):
    old = create(provider, name="x [job-9/s0a1]")
    asked_at = old.create_time + timedelta(minutes=200)  # long after `old`: it is not the batch asked for
    assert provider.find_batches("[job-9/s0a1]", asked_at) == []


def test_find_batches_allows_for_clock_skew_and_naive_datetimes(provider: GeminiBatchProvider):
    batch = create(provider, name="x [job-3/s0a1]")
    slightly_later = (batch.create_time + timedelta(minutes=2)).astimezone(UTC).replace(tzinfo=None)
    assert [b.name for b in provider.find_batches("[job-3/s0a1]", slightly_later)] == [batch.name]


def test_find_batches_judges_a_batch_without_create_time_by_name(provider: GeminiBatchProvider, fake: FakeGemini):
    batch = create(provider, name="x [job-5/s1a1]")
    del fake.batches[batch.name]["metadata"]["createTime"]
    assert [b.name for b in provider.find_batches("[job-5/s1a1]", datetime(2030, 1, 1, tzinfo=UTC))] == [batch.name]


def test_cancel_batch(provider: GeminiBatchProvider):
    name = create(provider).name
    provider.cancel_batch(name)
    assert provider.get_batch(name).state is ProviderState.CANCELLED


def test_cancel_ignores_missing_and_finished_batches(provider: GeminiBatchProvider, fake: FakeGemini):
    provider.cancel_batch("batches/gone")
    name = create(provider).name
    fake.complete(name)
    provider.cancel_batch(name)  # the API answers 400 FAILED_PRECONDITION
    assert provider.get_batch(name).state is ProviderState.SUCCEEDED


def test_cancel_raises_other_refusals_of_a_running_batch(provider: GeminiBatchProvider, fake: FakeGemini):
    name = create(provider).name
    fake.faults.append(
        lambda r: error_response(403, "PERMISSION_DENIED", "no") if r.url.path.endswith(":cancel") else None
    )
    with pytest.raises(PermanentError):
        provider.cancel_batch(name)


def test_inputs_and_results_are_deleted(provider: GeminiBatchProvider, fake: FakeGemini):
    ref, _ = provider.prepare_input(lambda: iter(items("a", "b")), OPTIONS, "d")
    name = provider.create_batch(options=OPTIONS, input_ref=ref, display_name="d", tag="d").name
    fake.complete(name)
    responses = fake.batches[name]["metadata"]["output"]["responsesFile"]
    provider.delete_input(ref)
    provider.delete_input(ref)  # a missing input is not an error
    assert ref not in fake.files
    assert provider.delete_results(name) is True and responses not in fake.files


def test_results_the_api_keeps_are_reported_kept(provider: GeminiBatchProvider, fake: FakeGemini):
    name = create(provider).name
    fake.complete(name)
    fake.faults.append(lambda r: error_response(400, "INVALID_ARGUMENT", "File ID cannot be more than 40 characters")
                       if r.method == "DELETE" else None)
    assert provider.delete_results(name) is False


def test_unknown_models_are_refused_by_capabilities(provider: GeminiBatchProvider):
    capabilities = provider.capabilities("models/gemini-embedding-001")
    assert (capabilities.provider, capabilities.model, capabilities.max_dimensions) == ("gemini", "gemini-embedding-001", 3072)
    assert capabilities.quotas.enqueued_tokens == 500_000 and capabilities.quotas.concurrent_batches == 100
    with pytest.raises(PermanentError, match="no batch embedding model"):
        provider.capabilities("text-embedding-004")


def test_every_method_maps_the_clients_errors(fake: FakeGemini, clock):
    fake.faults.append(lambda r: error_response(503, "UNAVAILABLE", "down"))
    with GeminiClient("k" * 8, base_url="https://gemini.test", transport=httpx.MockTransport(fake.handler),
                      sleep=clock.sleep, max_retries=1) as client:
        provider = GeminiBatchProvider(client)
        calls = [
            lambda: provider.get_batch("batches/x"),
            lambda: provider.find_batches("t", datetime(2025, 1, 1, tzinfo=UTC)),
            lambda: provider.cancel_batch("batches/x"),
            lambda: list(provider.iter_results("batches/x")),
            lambda: provider.delete_input("files/x"),
            lambda: provider.delete_results("batches/x"),
            lambda: provider.prepare_input(lambda: iter(items("a")), OPTIONS, "d"),
        ]
        for call in calls:
            with pytest.raises(TransientError):
                call()
        fake.faults.clear()
        with pytest.raises(NotFound):
            provider.get_batch("batches/x")


def test_interactive_embeddings_go_in_calls_of_100(client: GeminiClient, fake: FakeGemini):
    texts = [f"q{i}" for i in range(101)]
    vectors = client.batch_embed_contents(
        texts, model="gemini-embedding-001", task_type="RETRIEVAL_QUERY", output_dimensionality=768
    )
    assert vectors == [vector_for(t) for t in texts]
    calls = fake.requests_to(":batchEmbedContents")
    assert len(calls) == 2
    assert json.loads(calls[0].content)["requests"][0]["outputDimensionality"] == 768


def test_token_counts_a_response_reports_are_kept(provider: GeminiBatchProvider, fake: FakeGemini):
    from shared.adapters.gemini_provider import to_item_result
    from shared.gemini.models import parse_result

    line = {"key": "k0", "response": {"embedding": {"values": [0.5, 0.5]}, "tokenCount": "7"}}
    assert to_item_result(parse_result(line, 0)).tokens == 7
    assert to_item_result(parse_result({"key": "k1", "response": {"embedding": {"values": [1.0]}}}, 1)).tokens is None
