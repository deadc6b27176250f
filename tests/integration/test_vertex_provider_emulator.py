"""VertexBatchProvider, unchanged, against the emulator's Vertex AI surface and the local stack's
fake-gcs-server, through the official Cloud Storage client: prepare, create (labelled), find by label, poll,
results by key with token counts, a lost create answer recovered by the label, cancel, clean-up, queries.

The emulator is the stack's when it reaches the stack's Cloud Storage (`/_emulator/vertex` names it), else one
started here (hash encoder) on the stack's fake-gcs-server. Object names are fresh per test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.cloud import storage

from shared.adapters.gcs_blobs import GcsBlobStore
from shared.adapters.vertex_provider import VertexBatchProvider
from shared.domain.options import JobOptions
from shared.errors import TransientError
from shared.ports import ProviderState, StagedItem
from shared.vertex import StaticToken, VertexClient
from tests.emulator.emulator_helpers import RunningEmulator, start_emulator, wait_for

pytestmark = pytest.mark.integration

TOKEN = "vertex-integration-token"


@pytest.fixture(scope="module")
def vertex(stack) -> Iterator[tuple[str, str]]:
    """The base URL and bearer token of an emulator whose Vertex surface reads and writes the stack's Cloud
    Storage: the stack's own (with the token it was given), or one started for these tests."""
    storage_host = stack.env["STORAGE_EMULATOR_HOST"]
    if "gemini" in stack.parts and stack.env.get("VERTEX_ACCESS_TOKEN"):
        own = httpx.get(stack.env["GEMINI_API_BASE_URL"] + "/_emulator/vertex", timeout=10, trust_env=False)
        if own.status_code == 200 and own.json().get("storage") == storage_host:
            yield stack.env["GEMINI_API_BASE_URL"], stack.env["VERTEX_ACCESS_TOKEN"]
            return
    running: RunningEmulator = start_emulator("vertex-integration-emulator", {
        "GEMINI_EMULATOR_ENCODER": "hash", "GEMINI_EMULATOR_STORAGE_HOST": storage_host,
        "GEMINI_EMULATOR_VERTEX_TOKEN": TOKEN})
    try:
        yield running.base_url, TOKEN
    finally:
        running.process.stop()


@pytest.fixture(scope="module")
def vertex_url(vertex: tuple[str, str]) -> str:
    return vertex[0]


@pytest.fixture
def faults(vertex_url: str) -> Iterator[Callable[[dict], None]]:
    def put(plan: dict) -> None:
        httpx.put(f"{vertex_url}/_emulator/faults", json=plan, timeout=10, trust_env=False).raise_for_status()

    yield put
    httpx.delete(f"{vertex_url}/_emulator/faults", timeout=10, trust_env=False).raise_for_status()


@pytest.fixture
def provider(stack, vertex: tuple[str, str]) -> Iterator[VertexBatchProvider]:
    vertex_url, token = vertex
    root = f"gs://{stack.env['OUTPUT_BUCKET']}/vertex-it-{uuid.uuid4().hex[:8]}/"
    client = VertexClient(stack.env["GOOGLE_CLOUD_PROJECT"], tokens=StaticToken(token), base_url=vertex_url,
                          max_retries=2)
    yield VertexBatchProvider(client, GcsBlobStore(storage.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])),
                              staging_prefix=root + "inputs/", output_prefix=root + "outputs/", location="us-central1")
    client.close()


def staged(count: int, prefix: str = "passage") -> Callable[[], Iterator[StagedItem]]:
    return lambda: iter(StagedItem(key=f"k{i}", text=f"{prefix} {i} about rivers and markets", title=f"Doc {i}")
                        for i in range(count))


def finished(provider: VertexBatchProvider, name: str, timeout: float = 90) -> object:
    return wait_for(lambda: (b := provider.get_batch(name)).terminal and b, timeout, f"{name} to end")


def objects(provider: VertexBatchProvider, prefix: str) -> list[str]:
    return [info.uri for info in provider.blobs.list(prefix)]


def test_a_batch_goes_through_vertex_from_staging_to_results_by_key(provider):
    options = JobOptions(provider="vertex", output_dimensionality=768)
    tag = f"[job-it{uuid.uuid4().hex[:8]}/s0a1]"
    started = datetime.now(UTC)
    input_ref, size = provider.prepare_input(staged(30), options, f"integration {tag}")
    assert provider.blobs.stat(input_ref).size == size
    batch = provider.create_batch(options=options, input_ref=input_ref, display_name=f"integration {tag}", tag=tag)
    assert batch.state in (ProviderState.PENDING, ProviderState.RUNNING)
    assert [b.name for b in provider.find_batches(tag, created_after=started)] == [batch.name]
    done = finished(provider, batch.name)
    assert (done.state, done.succeeded, done.failed, done.total) == (ProviderState.SUCCEEDED, 30, 0, 30)
    results = {r.key: r for r in provider.iter_results(batch.name)}
    assert set(results) == {f"k{i}" for i in range(30)}
    assert all(len(r.values) == 768 and r.tokens and r.tokens > 0 for r in results.values())
    assert provider.delete_results(batch.name) is True
    assert objects(provider, provider.output_prefix) == []
    provider.delete_input(input_ref)
    assert provider.blobs.stat(input_ref) is None


def test_failed_items_come_back_as_errors_next_to_the_good_ones(provider, faults):
    faults({"fail_texts_containing": "passage 3 "})
    options = JobOptions(provider="vertex", output_dimensionality=128)
    tag = f"[job-it{uuid.uuid4().hex[:8]}/s1a1]"
    input_ref, _ = provider.prepare_input(staged(5), options, f"items {tag}")
    batch = provider.create_batch(options=options, input_ref=input_ref, display_name=f"items {tag}", tag=tag)
    done = finished(provider, batch.name)
    assert (done.state, done.succeeded, done.failed) == (ProviderState.SUCCEEDED, 4, 1)
    results = {r.key: r for r in provider.iter_results(batch.name)}
    assert results["k3"].values is None and results["k3"].error.code == "INTERNAL"
    assert all(results[f"k{i}"].values for i in (0, 1, 2, 4))


def test_a_lost_create_answer_is_recovered_by_the_label_and_the_stray_cancelled(provider, faults):
    options = JobOptions(provider="vertex", output_dimensionality=128)
    tag = f"[job-it{uuid.uuid4().hex[:8]}/s2a1]"
    started = datetime.now(UTC) - timedelta(seconds=1)
    input_ref, _ = provider.prepare_input(staged(40), options, f"lost {tag}")
    faults({"lose_create_response": {"count": 1, "status": 503}, "pending_seconds": 60})
    with pytest.raises(TransientError):
        provider.create_batch(options=options, input_ref=input_ref, display_name=f"lost {tag}", tag=tag)
    [found] = provider.find_batches(tag, created_after=started)
    assert found.display_name.endswith(tag) and found.state == ProviderState.PENDING
    assert provider.find_batches("[job-it-nobody/s0a1]", created_after=started) == []
    provider.cancel_batch(found.name)
    assert finished(provider, found.name).state == ProviderState.CANCELLED
    provider.cancel_batch(found.name)  # an ended job: left as it is


def test_gemini_embedding_2_gets_its_task_in_the_text_and_queries_work(provider):
    options = JobOptions(provider="vertex", model="gemini-embedding-2", output_dimensionality=256)
    tag = f"[job-it{uuid.uuid4().hex[:8]}/s3a1]"
    input_ref, _ = provider.prepare_input(staged(3), options, f"two {tag}")
    first = json.loads(_first_line(provider, input_ref))
    assert first["request"]["content"]["parts"][0]["text"].startswith("title: Doc 0 | text: passage 0")
    assert first["request"]["embed_content_config"] == {"output_dimensionality": 256}
    batch = provider.create_batch(options=options, input_ref=input_ref, display_name=f"two {tag}", tag=tag)
    assert "/locations/us/" in batch.name, "gemini-embedding-2 runs in the multi-region of us-central1"
    assert finished(provider, batch.name).state == ProviderState.SUCCEEDED
    assert all(len(r.values) == 256 for r in provider.iter_results(batch.name))
    query = provider.embed_query("rivers", JobOptions(provider="vertex", output_dimensionality=768))
    assert len(query) == 768
    assert len(provider.embed_query("rivers", options)) == 256


def _first_line(provider: VertexBatchProvider, uri: str) -> bytes:
    with provider.blobs.open_read(uri) as stream:
        return stream.readline()
