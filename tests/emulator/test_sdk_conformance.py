"""Google's official SDK (google-genai) against the emulator, unchanged but for base_url.

google-genai 3.x sends the Developer API to /v1 by default (GOOGLE_AI_API_DEFAULT_VERSION = 'v1');
both v1 and v1beta are driven here. `batches.create_embeddings` is marked experimental by the SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

from tests.emulator.emulator_helpers import API_KEY, MODEL, RunningEmulator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:batches.create_embeddings")
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@pytest.fixture(params=["v1", "v1beta"])
def client(request, api, emulator: RunningEmulator) -> Iterator[genai.Client]:
    options = types.HttpOptions(base_url=emulator.base_url)
    if request.param == "v1beta":
        options = types.HttpOptions(base_url=emulator.base_url, api_version="v1beta")
    yield genai.Client(api_key=API_KEY, http_options=options)


def finished(client: genai.Client, name: str, timeout: float = 60.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.state.name in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still {job.state.name} after {timeout}s")
        time.sleep(0.05)


def test_embed_content(client):
    response = client.models.embed_content(
        model=MODEL,
        contents=["How do I reset my password?", "I forgot my password", "Bake for 30 minutes"],
        config=types.EmbedContentConfig(output_dimensionality=768, task_type="SEMANTIC_SIMILARITY"),
    )
    vectors = np.array([e.values for e in response.embeddings])
    assert vectors.shape == (3, 768)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]
    full = client.models.embed_content(model=MODEL, contents="How do I reset my password?")
    assert len(full.embeddings[0].values) == 3072
    np.testing.assert_allclose(full.embeddings[0].values[:768], vectors[0], atol=1e-7)


def test_file_upload_batch_and_download(client, tmp_path: Path, emulator: RunningEmulator):
    texts = [f"document {i} is about {'rivers' if i % 2 else 'markets'}" for i in range(12)]
    source = tmp_path / "requests.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "key": f"doc-{i}",
                    "request": {"content": {"parts": [{"text": t}]}, "output_dimensionality": 256},
                }
            )
            + "\n"
            for i, t in enumerate(texts)
        )
    )
    uploaded = client.files.upload(
        file=source, config={"mime_type": "application/jsonl", "display_name": "requests"}
    )
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == source.stat().st_size
    assert (uploaded.state.name, uploaded.source.name, uploaded.display_name) == (
        "ACTIVE",
        "UPLOADED",
        "requests",
    )
    assert client.files.get(name=uploaded.name).sha256_hash == uploaded.sha256_hash
    assert uploaded.name in [f.name for f in client.files.list()]

    job = client.batches.create_embeddings(
        model=MODEL, src={"file_name": uploaded.name}, config={"display_name": "sdk file batch"}
    )
    assert job.name.startswith("batches/") and job.model == f"models/{MODEL}"
    assert job.display_name == "sdk file batch"
    assert job.state.name in {"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
    done = finished(client, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.end_time is not None
    assert done.dest.file_name.startswith("files/")

    data = client.files.download(file=done.dest.file_name)
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [line["key"] for line in lines] == [f"doc-{i}" for i in range(12)]
    assert {len(line["response"]["embedding"]["values"]) for line in lines} == {256}
    generated = client.files.get(name=done.dest.file_name)
    assert generated.source.name == "GENERATED" and generated.download_uri
    assert client.files.download(file=generated) == data  # a File object needs its download_uri
    target = tmp_path / "responses.jsonl"
    client.files.download(file=done.dest.file_name, destination=target)
    assert target.read_bytes() == data
    calls = emulator.stats()["calls"]
    assert calls["uploads"] == 1 and calls["upload_chunks"] >= 1 and calls["downloads"] == 3


def test_inline_batch_get_list_cancel_delete(client):
    texts = ["a short text", "another short text", "a third one"]
    job = client.batches.create_embeddings(
        model=MODEL,
        src={"inlined_requests": {"contents": texts, "config": {"output_dimensionality": 128}}},
        config={"display_name": "sdk inline batch"},
    )
    done = finished(client, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    responses = done.dest.inlined_embed_content_responses
    assert len(responses) == 3 and all(r.error is None for r in responses)
    # Three items come back in input order (only larger inline batches are reordered); the SDK
    # sends no metadata, so order is all it has.
    for text, response in zip(texts, responses, strict=True):
        interactive = client.models.embed_content(
            model=MODEL, contents=text, config={"output_dimensionality": 128}
        )
        np.testing.assert_allclose(
            response.response.embedding.values, interactive.embeddings[0].values, atol=1e-7
        )

    listed = [b.name for b in client.batches.list(config={"page_size": 1})]
    assert job.name in listed

    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as caught:
        client.batches.get(name=job.name)
    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")


def test_cancel_through_the_sdk(client, emulator: RunningEmulator):
    emulator.set_faults({"pending_seconds": 60})
    job = client.batches.create_embeddings(
        model=MODEL, src={"inlined_requests": {"contents": ["x"]}}, config={"display_name": "to cancel"}
    )
    assert job.state.name == "JOB_STATE_PENDING"
    client.batches.cancel(name=job.name)
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_CANCELLED"


def test_errors_reach_the_sdk_as_google_errors(client, emulator: RunningEmulator):
    wrong = genai.Client(api_key="wrong-key", http_options=types.HttpOptions(base_url=emulator.base_url))
    with pytest.raises(errors.ClientError) as bad_key:
        wrong.models.embed_content(model=MODEL, contents="x")
    assert (bad_key.value.code, bad_key.value.status) == (400, "INVALID_ARGUMENT")
    assert "API key not valid" in bad_key.value.message

    with pytest.raises(errors.ClientError) as no_name:  # the emulator's strict rule: displayName required
        client.batches.create_embeddings(model=MODEL, src={"inlined_requests": {"contents": ["x"]}})
    assert no_name.value.code == 400 and "display_name" in no_name.value.message

    emulator.set_faults({"http_5xx": {"count": 1, "status": 503, "path_contains": "batches"}})
    with pytest.raises(errors.ServerError) as unavailable:
        client.batches.list()
    assert (unavailable.value.code, unavailable.value.status) == (503, "UNAVAILABLE")
