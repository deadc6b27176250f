"""VertexBatchProvider over an in-memory fake of Vertex AI's REST surface (httpx.MockTransport) and the
in-memory blob store: request lines, labels, paging, state mapping, errors mapped, results with token counts."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.adapters.vertex_provider import (
    LABEL_KEY,
    VERTEX_MODELS,
    VertexBatchProvider,
    encode_text,
    parse_output_line,
    request_line,
    tag_label,
)
from shared.domain.options import JobOptions
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.ports import ProviderState, StagedItem
from shared.vertex import AdcTokens, StaticToken, VertexClient, endpoint_for
from tests.fakes import FakeBlobStore

TOKEN = "ya29.unit-test-token"
STAGING = "gs://bucket/emb/_staging/_vertex/inputs/"
OUTPUTS = "gs://bucket/emb/_staging/_vertex/outputs/"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
TAG = "[job-abc123/s4a1]"
G1, G2 = VERTEX_MODELS["gemini-embedding-001"], VERTEX_MODELS["gemini-embedding-2"]


class FakeVertex:
    """Vertex AI's batchPredictionJobs and embedding endpoints, in memory, as httpx sees them.

    `fail(method, path_part, status, body=None, headers=None, times=1)` makes the next matching requests
    answer an error; `requests` records (method, url, headers, json body)."""

    def __init__(self, page_size_cap: int = 1000):
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.failures: list[list[Any]] = []
        self.page_size_cap = page_size_cap
        self.ignore_filter = False
        self.next_id = 1000

    def fail(self, method: str, part: str, status: int, body: dict | None = None,
             headers: dict[str, str] | None = None, times: int = 1, exc: Exception | None = None) -> None:
        self.failures.append([method, part, status, body, headers or {}, times, exc])

    def add_job(self, location: str = "us-central1", **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        job = {"name": f"projects/p/locations/{location}/batchPredictionJobs/{self.next_id}", "displayName": "d",
               "state": "JOB_STATE_PENDING", "createTime": "2026-03-01T00:00:00.123456789Z", **fields}
        self.jobs[job["name"]] = job
        return job

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, str(request.url), dict(request.headers), body))
        for failure in self.failures:
            method, part, status, error_body, headers, times, exc = failure
            if times > 0 and request.method == method and part in request.url.path:
                failure[5] -= 1
                if exc is not None:
                    raise exc
                return httpx.Response(status, json=error_body or {"error": {"code": status, "message": "injected"}},
                                      headers=headers)
        path = request.url.path.removeprefix("/v1/")
        if request.method == "POST" and path.endswith("/batchPredictionJobs"):
            location = path.split("/")[3]
            job = self.add_job(location, **{k: v for k, v in body.items()})
            return httpx.Response(200, json=job)
        if request.method == "GET" and path.endswith("/batchPredictionJobs"):
            return self._list(path, request.url.params)
        if path.endswith(":cancel"):
            job = self.jobs.get(path.removesuffix(":cancel"))
            if job is None:
                return httpx.Response(404, json={"error": {"code": 404, "message": "no job"}})
            job["state"] = "JOB_STATE_CANCELLING"
            return httpx.Response(200, json={})
        if path.endswith(":predict"):
            return httpx.Response(200, json={"predictions": [
                {"embeddings": {"values": [0.5, 0.5], "statistics": {"token_count": 3, "truncated": False}}}]})
        if path.endswith(":embedContent"):
            return httpx.Response(200, json={"embedding": {"values": [0.25, 0.75]}, "usageMetadata": {"promptTokenCount": 9}})
        if request.method == "GET" and path in self.jobs:
            return httpx.Response(200, json=self.jobs[path])
        return httpx.Response(404, json={"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})

    def _list(self, path: str, params: httpx.QueryParams) -> httpx.Response:
        location = path.split("/")[3]
        wanted = re.fullmatch(r"labels\.(\w+)=(\S+)", params.get("filter", ""))
        jobs = [j for j in self.jobs.values() if j["name"].split("/")[3] == location and (
            self.ignore_filter or wanted is None or (j.get("labels") or {}).get(wanted[1]) == wanted[2])]
        size = min(int(params.get("pageSize", 100)), self.page_size_cap)
        start = int(params.get("pageToken") or 0)
        answer: dict[str, Any] = {"batchPredictionJobs": jobs[start:start + size]} if jobs[start:start + size] else {}
        if start + size < len(jobs):
            answer["nextPageToken"] = str(start + size)
        return httpx.Response(200, json=answer)


class CountingTokens:
    def __init__(self):
        self.invalidated = 0

    def token(self) -> str:
        return f"{TOKEN}-{self.invalidated}"

    def invalidate(self) -> None:
        self.invalidated += 1


@pytest.fixture
def vertex() -> FakeVertex:
    return FakeVertex()


@pytest.fixture
def blobs() -> FakeBlobStore:
    return FakeBlobStore()


def make(vertex: FakeVertex, blobs: FakeBlobStore, *, location: str = "us-central1", tokens: Any = None,
         **kwargs: Any) -> VertexBatchProvider:
    client = VertexClient("p", tokens=tokens or StaticToken(TOKEN), transport=vertex.transport(), sleep=lambda s: None,
                          rand=lambda: 0.0)
    return VertexBatchProvider(client, blobs, staging_prefix=STAGING, output_prefix=OUTPUTS, location=location, **kwargs)


def options(**fields: Any) -> JobOptions:
    return JobOptions(provider="vertex", **fields)


def items(*texts: str, title: str | None = None):
    return lambda: iter(StagedItem(key=f"k{i}", text=t, title=title) for i, t in enumerate(texts))


# -- input lines ----------------------------------------------------------------------------------------------


def test_gemini_embedding_001_lines_carry_task_title_and_dimensions_in_the_config():
    document = json.loads(request_line(StagedItem("k1", "Hello", "A title"), options(output_dimensionality=768), G1))
    assert document == {"key": "k1", "request": {"content": {"parts": [{"text": "Hello"}]}, "embed_content_config": {
        "output_dimensionality": 768, "task_type": "RETRIEVAL_DOCUMENT", "title": "A title"}}}
    query = json.loads(request_line(StagedItem("k2", "Hi", "ignored"), options(task_type="RETRIEVAL_QUERY"), G1))
    assert query["request"]["embed_content_config"] == {"output_dimensionality": 768, "task_type": "RETRIEVAL_QUERY"}
    bare = json.loads(request_line(StagedItem("k3", "Hi"), options(task_type="TASK_TYPE_UNSPECIFIED"), G1))
    assert bare["request"]["embed_content_config"] == {"output_dimensionality": 768}


@pytest.mark.parametrize(("task", "title", "expected"), [
    ("RETRIEVAL_DOCUMENT", "Handbook", "title: Handbook | text: reset it"),
    ("RETRIEVAL_DOCUMENT", None, "title: none | text: reset it"),
    ("RETRIEVAL_QUERY", "dropped", "task: search result | query: reset it"),
    ("QUESTION_ANSWERING", None, "task: question answering | query: reset it"),
    ("FACT_VERIFICATION", None, "task: fact checking | query: reset it"),
    ("CODE_RETRIEVAL_QUERY", None, "task: code retrieval | query: reset it"),
    ("CLASSIFICATION", None, "task: classification | query: reset it"),
    ("CLUSTERING", None, "task: clustering | query: reset it"),
    ("SEMANTIC_SIMILARITY", None, "task: sentence similarity | query: reset it"),
    ("TASK_TYPE_UNSPECIFIED", "x", "reset it"),
])
def test_gemini_embedding_2_takes_its_task_and_title_inside_the_text(task, title, expected):
    item = StagedItem("k", "reset it", title)
    assert encode_text(item, task, G2) == expected
    line = json.loads(request_line(item, options(model="gemini-embedding-2", task_type=task, output_dimensionality=3072), G2))
    assert line["request"] == {"content": {"parts": [{"text": expected}]},
                               "embed_content_config": {"output_dimensionality": 3072}}
    assert encode_text(item, task, G1) == "reset it", "gemini-embedding-001 keeps the text as it is"


def test_capabilities_record_the_documented_batch_limits_and_no_concurrency_quota(vertex, blobs):
    provider = make(vertex, blobs)
    one = provider.capabilities("gemini-embedding-001")
    assert (one.max_batch_rows, one.max_batch_bytes, one.reports_tokens, one.task_in_text) == (1_000_000, 10**9, True, False)
    assert (one.quotas.enqueued_tokens, one.quotas.concurrent_batches) == (None, None)
    two = provider.capabilities("models/gemini-embedding-2")
    assert two.task_in_text and two.max_input_tokens == 8192 and two.ledger_key == "vertex~gemini-embedding-2"
    with pytest.raises(PermanentError, match="serves no embedding model"):
        provider.capabilities("text-embedding-005")
    pinned = make(vertex, blobs, model_locations={"gemini-embedding-2": "us-central1"})
    with pytest.raises(PermanentError, match="global, us"):
        pinned.capabilities("gemini-embedding-2")
    with pytest.raises(PermanentError, match="not in global"):
        make(vertex, blobs, location="global").capabilities("gemini-embedding-001")


# -- prepare and create ----------------------------------------------------------------------------------------


def test_prepare_input_writes_the_lines_to_the_staging_prefix_under_a_stable_name(vertex, blobs):
    provider = make(vertex, blobs)
    uri, size = provider.prepare_input(items("one", "two", title="T"), options(), f"Docs {TAG}")
    assert uri.startswith(STAGING) and uri.endswith(".jsonl") and "job-abc123-s4a1" in uri
    data = blobs.read(uri)
    assert size == len(data) and [json.loads(x)["key"] for x in data.splitlines()] == ["k0", "k1"]
    again, _ = provider.prepare_input(items("one", "two", title="T"), options(), f"Docs {TAG}")
    assert again == uri, "a retried prepare overwrites the same object"
    other, _ = provider.prepare_input(items("one"), options(), "Docs [job-abc123/s4a2]")
    assert other != uri


def test_prepare_input_refuses_a_shard_over_the_row_limit_and_keeps_nothing(vertex, blobs):
    class Small(VertexBatchProvider):
        def capabilities(self, model):
            return dataclasses.replace(G1, max_batch_rows=2)

    provider = Small(make(vertex, blobs).client, blobs, staging_prefix=STAGING, output_prefix=OUTPUTS)
    with pytest.raises(PermanentError, match="at most 2 rows"):
        provider.prepare_input(items("a", "b", "c"), options(), f"x {TAG}")
    assert blobs.objects == {}


def test_create_labels_the_job_with_the_tag_and_names_its_own_output_prefix(vertex, blobs):
    provider = make(vertex, blobs, labels={"team": "search"})
    uri, _ = provider.prepare_input(items("a"), options(), f"Docs {TAG}")
    batch = provider.create_batch(options=options(), input_ref=uri, display_name=f"Docs {TAG}", tag=TAG)
    method, url, headers, body = vertex.requests[-1]
    assert (method, url) == ("POST", "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/"
                                     "us-central1/batchPredictionJobs")
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert body["model"] == "publishers/google/models/gemini-embedding-001"
    assert body["inputConfig"] == {"instancesFormat": "jsonl", "gcsSource": {"uris": [uri]}}
    prefix = body["outputConfig"]["gcsDestination"]["outputUriPrefix"]
    assert body["outputConfig"]["predictionsFormat"] == "jsonl" and prefix.startswith(OUTPUTS) and prefix.endswith("/")
    assert body["labels"] == {"team": "search", LABEL_KEY: tag_label(TAG)}
    assert re.fullmatch(r"[a-z0-9_-]{1,63}", tag_label(TAG)) and tag_label(TAG) == tag_label(str(TAG))
    assert body["displayName"] == f"Docs {TAG}"
    assert batch.state == ProviderState.PENDING and batch.name.endswith("/batchPredictionJobs/1001")
    assert batch.create_time == datetime(2026, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)
    long = provider.create_batch(options=options(), input_ref=uri, display_name="x" * 300, tag=TAG)
    assert len(long.display_name) == 128 and long.display_name.endswith(TAG)
    with pytest.raises(PermanentError, match="not a batch input"):
        provider.create_batch(options=options(), input_ref="gs://elsewhere/x.jsonl", display_name=TAG, tag=TAG)


def test_gemini_embedding_2_goes_to_the_multi_region_of_the_configured_region(vertex, blobs):
    provider = make(vertex, blobs, location="europe-west4")
    uri, _ = provider.prepare_input(items("a"), options(model="gemini-embedding-2"), f"d {TAG}")
    provider.create_batch(options=options(model="gemini-embedding-2"), input_ref=uri, display_name=f"d {TAG}", tag=TAG)
    assert vertex.requests[-1][1] == "https://aiplatform.eu.rep.googleapis.com/v1/projects/p/locations/eu/batchPredictionJobs"
    assert endpoint_for("global") == "https://aiplatform.googleapis.com"


def test_a_create_refused_for_quota_is_capacity_and_is_sent_once(vertex, blobs):
    provider = make(vertex, blobs)
    uri, _ = provider.prepare_input(items("a"), options(), f"d {TAG}")
    vertex.fail("POST", "batchPredictionJobs", 429, headers={"Retry-After": "17"})
    with pytest.raises(CapacityExhausted) as refused:
        provider.create_batch(options=options(), input_ref=uri, display_name=f"d {TAG}", tag=TAG)
    assert refused.value.retry_after == 17.0
    vertex.fail("POST", "batchPredictionJobs", 503, times=5)
    before = len(vertex.requests)
    with pytest.raises(TransientError):
        provider.create_batch(options=options(), input_ref=uri, display_name=f"d {TAG}", tag=TAG)
    assert len(vertex.requests) - before == 1, "a create that may have reached Vertex AI is not repeated"
    vertex.failures.clear()
    vertex.fail("POST", "batchPredictionJobs", 0, exc=httpx.ConnectError("refused"))
    assert provider.create_batch(options=options(), input_ref=uri, display_name=f"d {TAG}", tag=TAG).name
    vertex.fail("POST", "batchPredictionJobs", 400, {"error": {"code": 400, "message": "bad model", "status": "INVALID_ARGUMENT"}})
    with pytest.raises(PermanentError) as bad:
        provider.create_batch(options=options(), input_ref=uri, display_name=f"d {TAG}", tag=TAG)
    assert bad.value.code == "INVALID_ARGUMENT" and "bad model" in str(bad.value)


def test_reads_are_retried_and_errors_map_to_the_pipelines_tree(vertex, blobs):
    provider = make(vertex, blobs)
    job = vertex.add_job(state="JOB_STATE_RUNNING")
    vertex.fail("GET", "batchPredictionJobs/", 503, times=2)
    assert provider.get_batch(job["name"]).state == ProviderState.RUNNING
    vertex.fail("GET", "batchPredictionJobs/", 503, times=10)
    with pytest.raises(TransientError):
        provider.get_batch(job["name"])
    vertex.failures.clear()
    with pytest.raises(NotFound):
        provider.get_batch("projects/p/locations/us-central1/batchPredictionJobs/9")
    vertex.fail("GET", "batchPredictionJobs/", 403, {"error": {"code": 403, "message": f"Bearer {TOKEN} may not",
                                                               "status": "PERMISSION_DENIED"}})
    with pytest.raises(PermanentError) as denied:
        provider.get_batch(job["name"])
    assert denied.value.code == "PERMISSION_DENIED" and TOKEN not in str(denied.value)
    with pytest.raises(PermanentError, match="not a batch prediction job name"):
        provider.get_batch("batches/123")


def test_a_401_refreshes_the_token_once(vertex, blobs):
    tokens = CountingTokens()
    provider = make(vertex, blobs, tokens=tokens)
    job = vertex.add_job()
    vertex.fail("GET", "batchPredictionJobs/", 401)
    assert provider.get_batch(job["name"]).state == ProviderState.PENDING
    assert tokens.invalidated == 1 and vertex.requests[-1][2]["authorization"] == f"Bearer {TOKEN}-1"
    vertex.fail("GET", "batchPredictionJobs/", 401, times=2)
    with pytest.raises(PermanentError):
        provider.get_batch(job["name"])


# -- find, get, cancel --------------------------------------------------------------------------------------------


def test_find_batches_filters_by_the_tag_label_and_reads_every_page(vertex, blobs):
    provider = make(vertex, blobs)
    mine = [vertex.add_job(labels={LABEL_KEY: tag_label(TAG)}) for _ in range(5)]
    vertex.add_job(labels={LABEL_KEY: tag_label("[job-other/s0a1]")})
    old = vertex.add_job(labels={LABEL_KEY: tag_label(TAG)}, createTime="2026-01-01T00:00:00Z")
    vertex.page_size_cap = 2
    vertex.ignore_filter = True  # whatever the server does with the filter, the label is checked here
    found = provider.find_batches(TAG, created_after=NOW - timedelta(minutes=1))
    assert sorted(b.name for b in found) == sorted(j["name"] for j in mine)
    assert old["name"] not in {b.name for b in found}
    lists = [r for r in vertex.requests if r[0] == "GET" and r[1].split("?")[0].endswith("/batchPredictionJobs")]
    assert all(httpx.URL(r[1]).params["filter"] == f"labels.{LABEL_KEY}={tag_label(TAG)}" for r in lists)
    locations = {httpx.URL(r[1]).path.split("/")[5] for r in lists}
    assert locations == {"us-central1", "us"}, "every location in use is searched"
    assert len([r for r in lists if "/locations/us-central1/" in r[1]]) == 4  # 7 jobs, 2 a page


@pytest.mark.parametrize(("state", "expected"), [
    ("JOB_STATE_QUEUED", ProviderState.PENDING), ("JOB_STATE_PENDING", ProviderState.PENDING),
    ("JOB_STATE_PAUSED", ProviderState.PENDING), ("JOB_STATE_RUNNING", ProviderState.RUNNING),
    ("JOB_STATE_UPDATING", ProviderState.RUNNING), ("JOB_STATE_CANCELLING", ProviderState.RUNNING),
    ("JOB_STATE_SUCCEEDED", ProviderState.SUCCEEDED), ("JOB_STATE_PARTIALLY_SUCCEEDED", ProviderState.SUCCEEDED),
    ("JOB_STATE_FAILED", ProviderState.FAILED), ("JOB_STATE_CANCELLED", ProviderState.CANCELLED),
    ("JOB_STATE_EXPIRED", ProviderState.EXPIRED), ("JOB_STATE_SOMETHING_NEW", ProviderState.PENDING),
])
def test_job_states_map_to_the_ports_states(vertex, blobs, state, expected):
    job = vertex.add_job(state=state)
    batch = make(vertex, blobs).get_batch(job["name"])
    assert batch.state == expected
    assert batch.terminal == (expected in {ProviderState.SUCCEEDED, ProviderState.FAILED, ProviderState.CANCELLED,
                                           ProviderState.EXPIRED})


def test_counts_and_errors_come_from_the_job(vertex, blobs):
    provider = make(vertex, blobs)
    running = vertex.add_job(state="JOB_STATE_RUNNING",
                             completionStats={"successfulCount": "7", "failedCount": "2", "incompleteCount": "11"})
    batch = provider.get_batch(running["name"])
    assert (batch.total, batch.succeeded, batch.failed, batch.pending) == (20, 7, 2, 11)
    failed = vertex.add_job(state="JOB_STATE_FAILED", error={"code": 3, "message": "input failed validation"})
    assert provider.get_batch(failed["name"]).error.model_dump(exclude={"at"}) == {
        "code": "INVALID_ARGUMENT", "message": "input failed validation"}
    expired = vertex.add_job(state="JOB_STATE_EXPIRED")
    assert provider.get_batch(expired["name"]).error.code == "EXPIRED"


def test_cancel_is_best_effort(vertex, blobs):
    provider = make(vertex, blobs)
    running = vertex.add_job(state="JOB_STATE_RUNNING")
    provider.cancel_batch(running["name"])
    assert vertex.jobs[running["name"]]["state"] == "JOB_STATE_CANCELLING"
    provider.cancel_batch("projects/p/locations/us-central1/batchPredictionJobs/404")  # gone: nothing to do
    done = vertex.add_job(state="JOB_STATE_SUCCEEDED")
    vertex.fail("POST", ":cancel", 400, {"error": {"code": 400, "message": "cannot be cancelled", "status": "FAILED_PRECONDITION"}})
    provider.cancel_batch(done["name"])
    pending = vertex.add_job(state="JOB_STATE_PENDING")
    vertex.fail("POST", ":cancel", 400, {"error": {"code": 400, "message": "odd", "status": "FAILED_PRECONDITION"}})
    with pytest.raises(PermanentError, match="odd"):
        provider.cancel_batch(pending["name"])
    vertex.fail("POST", ":cancel", 503, times=10)
    with pytest.raises(TransientError):
        provider.cancel_batch(pending["name"])


# -- results and clean-up ---------------------------------------------------------------------------------------


def output_line(key: str, values: list[float] | None = None, tokens: str | None = "4", status: Any = None) -> bytes:
    row: dict[str, Any] = {"key": key, "request": {"content": {"parts": [{"text": "t"}]}}}
    if status is not None:
        row["status"] = status
    else:
        row["response"] = {"embedding": {"values": values or [0.6, 0.8]}, **({"tokenCount": tokens} if tokens else {})}
    return json.dumps(row).encode() + b"\n"


def test_results_are_read_from_the_jobs_output_directory_by_key_with_token_counts(vertex, blobs):
    provider = make(vertex, blobs)
    directory = f"{OUTPUTS}d-1/prediction-model-2026-03-01T00:00:00Z"
    blobs.put(f"{directory}/predictions_00001.jsonl", output_line("b", [1.0, 0.0], "12") + b"\n" + output_line(
        "a", status='Bad Request: {"error": {"code": 400, "message": "text too long", "status": "INVALID_ARGUMENT"}}'))
    blobs.put(f"{directory}/predictions_00002.jsonl", output_line("c", status={"code": 13, "message": "boom"})
              + output_line("d", status="something odd") + output_line("e", tokens=None))
    blobs.put(f"{directory}/_SUCCESS", b"")
    blobs.put(f"{OUTPUTS}d-1/prediction-model-other/predictions.jsonl", output_line("z"))  # another job's
    job = vertex.add_job(state="JOB_STATE_PARTIALLY_SUCCEEDED", outputInfo={"gcsOutputDirectory": directory})
    results = {r.key: r for r in provider.iter_results(job["name"])}
    assert set(results) == {"a", "b", "c", "d", "e"}
    assert (results["b"].values, results["b"].tokens, results["b"].error) == ([1.0, 0.0], 12, None)
    assert results["a"].error.code == "INVALID_ARGUMENT" and results["a"].error.message == "text too long"
    assert (results["c"].error.code, results["c"].error.message) == ("INTERNAL", "boom")
    assert (results["d"].error.code, results["d"].error.message) == ("UNKNOWN", "something odd")
    assert results["e"].values == [0.6, 0.8] and results["e"].tokens is None


def test_results_of_a_job_without_results_or_with_a_broken_line_are_refused(vertex, blobs):
    provider = make(vertex, blobs)
    running = vertex.add_job(state="JOB_STATE_RUNNING")
    with pytest.raises(PermanentError, match="no results"):
        list(provider.iter_results(running["name"]))
    directory = f"{OUTPUTS}x/prediction-model-1"
    blobs.put(f"{directory}/predictions.jsonl", b'{"no": "key"}\n')
    broken = vertex.add_job(state="JOB_STATE_SUCCEEDED", outputInfo={"gcsOutputDirectory": directory})
    with pytest.raises(PermanentError, match="line 1 of .*without a key"):
        list(provider.iter_results(broken["name"]))
    with pytest.raises(PermanentError, match="not JSON"):
        parse_output_line(b"{nope", "here")


def test_inputs_and_results_are_deleted_only_inside_the_configured_prefixes(vertex, blobs):
    provider = make(vertex, blobs)
    uri, _ = provider.prepare_input(items("a"), options(), f"d {TAG}")
    provider.delete_input(uri)
    provider.delete_input(uri)  # a missing input is not an error
    assert blobs.stat(uri) is None
    blobs.put("gs://bucket/precious.jsonl", b"x")
    with pytest.raises(PermanentError):
        provider.delete_input("gs://bucket/precious.jsonl")
    directory = f"{OUTPUTS}d-1/prediction-model-1"
    blobs.put(f"{directory}/predictions.jsonl", b"x")
    blobs.put(f"{OUTPUTS}d-1/prediction-model-2/predictions.jsonl", b"y")
    job = vertex.add_job(state="JOB_STATE_SUCCEEDED", outputInfo={"gcsOutputDirectory": directory})
    assert provider.delete_results(job["name"]) is True
    assert blobs.stat(f"{directory}/predictions.jsonl") is None
    assert blobs.stat(f"{OUTPUTS}d-1/prediction-model-2/predictions.jsonl") is not None, "another job's stay"
    foreign = vertex.add_job(state="JOB_STATE_SUCCEEDED", outputInfo={"gcsOutputDirectory": "gs://bucket/mine"})
    blobs.put("gs://bucket/mine/predictions.jsonl", b"z")
    assert provider.delete_results(foreign["name"]) is False and blobs.stat("gs://bucket/mine/predictions.jsonl")
    assert provider.delete_results("projects/p/locations/us-central1/batchPredictionJobs/77") is True


def test_queries_use_predict_for_001_and_embed_content_with_the_task_in_the_text_for_2(vertex, blobs):
    provider = make(vertex, blobs)
    assert provider.embed_query("reset password", options(output_dimensionality=256)) == [0.5, 0.5]
    method, url, _, body = vertex.requests[-1]
    assert url.endswith("/locations/us-central1/publishers/google/models/gemini-embedding-001:predict")
    assert body == {"instances": [{"content": "reset password", "task_type": "RETRIEVAL_QUERY"}],
                    "parameters": {"outputDimensionality": 256}}
    assert provider.embed_query("reset password", options(model="gemini-embedding-2")) == [0.25, 0.75]
    method, url, _, body = vertex.requests[-1]
    assert url.endswith("/locations/us/publishers/google/models/gemini-embedding-2:embedContent")
    assert body == {"content": {"role": "user", "parts": [{"text": "task: search result | query: reset password"}]},
                    "embedContentConfig": {"outputDimensionality": 768}}


# -- settings and credentials ------------------------------------------------------------------------------------


def settings(**fields: Any) -> SimpleNamespace:
    base = {"google_cloud_project": "proj", "output_bucket": "out", "output_prefix": "embeddings/"}
    return SimpleNamespace(**{**base, **fields})


def test_from_settings_builds_a_provider_with_derived_prefixes(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # the storage client needs no credentials
    provider = VertexBatchProvider.from_settings(settings(vertex_api_base_url="http://127.0.0.1:8203",
                                                          vertex_access_token=SecretStr("local"),
                                                          vertex_model_locations="gemini-embedding-2=global",
                                                          vertex_labels="team=search"))
    assert provider.staging_prefix == "gs://out/embeddings/_staging/_vertex/inputs/"
    assert provider.output_prefix == "gs://out/embeddings/_staging/_vertex/outputs/"
    assert provider.client.project == "proj" and provider.client.base_url == "http://127.0.0.1:8203"
    assert provider.location_for("gemini-embedding-2") == "global" and provider.labels == {"team": "search"}
    with pytest.raises(PermanentError, match="VERTEX_ACCESS_TOKEN"):
        VertexBatchProvider.from_settings(settings(vertex_access_token="x"))
    with pytest.raises(PermanentError, match="VERTEX_LABELS"):
        VertexBatchProvider.from_settings(settings(vertex_labels="Team=Search"))
    with pytest.raises(PermanentError, match="VERTEX_MODEL_LOCATIONS"):
        VertexBatchProvider.from_settings(settings(vertex_model_locations="gemini-embedding-2"))
    with pytest.raises(PermanentError, match="VERTEX_STAGING_PREFIX"):
        VertexBatchProvider.from_settings(settings(vertex_staging_prefix="/tmp/x"))
    adc = VertexBatchProvider.from_settings(settings(vertex_project="other", vertex_location="europe-west1"))
    assert adc.client.project == "other" and adc.location_for("gemini-embedding-2") == "eu"


def test_adc_tokens_refresh_when_expired_or_refused():
    class Credentials:
        def __init__(self):
            self.valid, self.token, self.refreshes = False, None, 0

        def refresh(self, request):
            self.refreshes += 1
            self.valid, self.token = True, f"ya29.fresh-{self.refreshes}"

    credentials = Credentials()
    tokens = AdcTokens(credentials)
    assert tokens.token() == "ya29.fresh-1" and tokens.token() == "ya29.fresh-1"
    tokens.invalidate()
    assert tokens.token() == "ya29.fresh-2" and credentials.refreshes == 2
    assert "fresh" not in repr(StaticToken("ya29.secret-value"))
