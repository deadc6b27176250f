"""GeminiBatchProvider: the port's contract over the client and the in-memory API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.adapters.gemini_provider import GeminiBatchProvider
from shared.domain.jobs import ErrorInfo
from shared.errors import NotFound, PermanentError, TransientError
from shared.gemini import GeminiClient
from shared.ports import ItemResult, ProviderBatch, ProviderState
from tests.unit.gemini.gemini_fakes import FakeGemini, error_response, vector_for


@pytest.fixture
def provider(client: GeminiClient) -> GeminiBatchProvider:
    return GeminiBatchProvider(client)


def requests_for(*texts: str) -> list[dict]:
    return [
        {"key": f"k{i}", "request": {"content": {"parts": [{"text": t}]}, "outputDimensionality": 768}}
        for i, t in enumerate(texts)
    ]


def test_create_inline_and_map_the_batch(provider: GeminiBatchProvider, fake: FakeGemini):
    batch = provider.create_batch(
        model="gemini-embedding-001", display_name="job-1/s0/a1", priority=3, requests=requests_for("a", "b")
    )
    assert isinstance(batch, ProviderBatch)
    assert (batch.state, batch.display_name, batch.total, batch.pending, batch.succeeded) == (
        ProviderState.PENDING,
        "job-1/s0/a1",
        2,
        2,
        0,
    )
    assert batch.create_time is not None and batch.create_time.tzinfo is not None
    body = json.loads(fake.requests[-1].content)["batch"]
    assert body["priority"] == "3"
    assert body["inputConfig"]["requests"]["requests"][1]["metadata"] == {"key": "k1"}


def test_upload_then_create_from_the_file(provider: GeminiBatchProvider, fake: FakeGemini):
    lines = [json.dumps(r).encode() + b"\n" for r in requests_for("x", "y", "z")]
    name = provider.upload_requests(iter(lines), sum(map(len, lines)), "job-1/s0/a1")
    assert name in fake.files and fake.files[name]["content"] == b"".join(lines)
    batch = provider.create_batch(
        model="gemini-embedding-001", display_name="job-1/s0/a1", priority=0, file_name=name
    )
    assert batch.total == 3


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
def test_get_batch_maps_every_state_and_the_counts(
    provider: GeminiBatchProvider, fake: FakeGemini, wire, state
):
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    fake.set_state(
        name,
        wire,
        request_count=10,
        successful_request_count=6,
        failed_request_count=3,
        pending_request_count=1,
    )
    batch = provider.get_batch(name)
    assert (batch.state, batch.total, batch.succeeded, batch.failed, batch.pending) == (state, 10, 6, 3, 1)


def test_a_failed_batch_carries_its_error(provider: GeminiBatchProvider, fake: FakeGemini):
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    fake.set_state(name, "BATCH_STATE_FAILED")
    fake.batches[name]["error"] = {"code": 13, "message": "internal error"}
    assert provider.get_batch(name).error == ErrorInfo(code="INTERNAL", message="internal error")


def test_iter_results_maps_vectors_and_errors(provider: GeminiBatchProvider, fake: FakeGemini):
    name = provider.create_batch(
        model="m", display_name="d", priority=0, requests=requests_for("aa", "bbb", "c")
    ).name
    fake.complete(name, failures={"k1": "too long"})
    results = {r.key: r for r in provider.iter_results(name)}
    assert results["k0"] == ItemResult(key="k0", values=vector_for("aa"))
    assert results["k2"].values == vector_for("c") and results["k2"].error is None
    assert results["k1"].values is None
    assert (results["k1"].error.code, results["k1"].error.message) == ("INVALID_ARGUMENT", "too long")


def test_iter_results_of_an_unfinished_batch_is_permanent(provider: GeminiBatchProvider):
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    with pytest.raises(PermanentError):
        list(provider.iter_results(name))


def test_find_batch_by_display_name_suffix(provider: GeminiBatchProvider, fake: FakeGemini):
    asked_at = fake.created_at
    for i in range(120):  # more than one page
        provider.create_batch(model="m", display_name=f"other-{i}", priority=0, requests=requests_for("a"))
    wanted = provider.create_batch(
        model="m", display_name="embeddings job-7/s3/a2", priority=0, requests=requests_for("a")
    )
    provider.create_batch(model="m", display_name="later", priority=0, requests=requests_for("a"))
    found = provider.find_batch("job-7/s3/a2", asked_at)
    assert found is not None and found.name == wanted.name
    assert provider.find_batch("job-7/s3/a1", asked_at) is None


def test_find_batch_stops_at_batches_older_than_asked(provider: GeminiBatchProvider, fake: FakeGemini):
    old = provider.create_batch(model="m", display_name="job-9/s0/a1", priority=0, requests=requests_for("a"))
    for i in range(250):
        provider.create_batch(model="m", display_name=f"newer-{i}", priority=0, requests=requests_for("a"))
    asked_at = old.create_time + timedelta(minutes=200)  # long after `old`: it is not the batch asked for
    fake.requests.clear()
    assert provider.find_batch("job-9/s0/a1", asked_at) is None
    pages = [r for r in fake.requests if r.url.path == "/v1beta/batches"]
    assert len(pages) == 1  # the 100 newest already reach below the cutoff; older pages are not read


def test_find_batch_allows_for_clock_skew_and_naive_datetimes(provider: GeminiBatchProvider):
    batch = provider.create_batch(
        model="m", display_name="job-3/s0/a1", priority=0, requests=requests_for("a")
    )
    slightly_later = (batch.create_time + timedelta(minutes=2)).astimezone(UTC).replace(tzinfo=None)
    assert provider.find_batch("job-3/s0/a1", slightly_later).name == batch.name


def test_cancel_batch(provider: GeminiBatchProvider, fake: FakeGemini):
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    provider.cancel_batch(name)
    assert provider.get_batch(name).state is ProviderState.CANCELLED


def test_cancel_ignores_missing_and_finished_batches(provider: GeminiBatchProvider, fake: FakeGemini):
    provider.cancel_batch("batches/gone")
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    fake.complete(name)
    provider.cancel_batch(name)  # the API answers 400 FAILED_PRECONDITION
    assert provider.get_batch(name).state is ProviderState.SUCCEEDED


def test_cancel_raises_other_refusals_of_a_running_batch(provider: GeminiBatchProvider, fake: FakeGemini):
    name = provider.create_batch(model="m", display_name="d", priority=0, requests=requests_for("a")).name
    fake.faults.append(
        lambda r: error_response(403, "PERMISSION_DENIED", "no") if r.url.path.endswith(":cancel") else None
    )
    with pytest.raises(PermanentError):
        provider.cancel_batch(name)


def test_transient_errors_stay_transient(fake: FakeGemini, clock):
    fake.faults.append(lambda r: error_response(503, "UNAVAILABLE", "down"))
    with GeminiClient(
        "k" * 8,
        base_url="https://gemini.test",
        transport=httpx.MockTransport(fake.handler),
        sleep=clock.sleep,
        max_retries=1,
    ) as client:
        provider = GeminiBatchProvider(client)
        with pytest.raises(TransientError):
            provider.get_batch("batches/x")
        with pytest.raises(NotFound):
            fake.faults.clear()
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


def test_find_batch_without_create_time_is_judged_by_name(provider: GeminiBatchProvider, fake: FakeGemini):
    batch = provider.create_batch(
        model="m", display_name="job-5/s1/a1", priority=0, requests=requests_for("a")
    )
    del fake.batches[batch.name]["metadata"]["createTime"]
    assert provider.find_batch("job-5/s1/a1", datetime(2030, 1, 1, tzinfo=UTC)).name == batch.name
