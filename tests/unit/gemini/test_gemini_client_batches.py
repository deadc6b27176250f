"""Batches through the client against the in-memory API: create, submit, poll, list, results."""

from __future__ import annotations

import json

import pytest

from shared.gemini import (
    AwaitTimeoutError,
    BatchNotCompleteError,
    BatchState,
    EmbedItem,
    GeminiClient,
    GeminiNotFoundError,
    InvalidArgumentError,
    PermanentGeminiError,
)
from shared.gemini.errors import RetryableGeminiError
from tests.unit.gemini.gemini_fakes import API_KEY, BASE_URL, FakeClock, FakeGemini, make_client, vector_for

# -- create --------------------------------------------------------------------------------------------


def test_create_sends_the_documented_body_and_header(client: GeminiClient, fake: FakeGemini):
    batch = client.create_embedding_batch(
        model="gemini-embedding-001",
        display_name="Docs 1",
        priority=5,
        inline_requests=[{"key": "a", "request": {"content": {"parts": [{"text": "alpha"}]}}}],
    )
    [request] = fake.requests
    assert request.method == "POST"
    assert request.url.path == "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "key" not in request.url.params
    assert json.loads(request.content) == {
        "batch": {
            "displayName": "Docs 1",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {"request": {"content": {"parts": [{"text": "alpha"}]}}, "metadata": {"key": "a"}}
                    ]
                }
            },
            "priority": "5",
        }
    }
    assert (batch.name, batch.state, batch.status, batch.request_count, batch.priority) == (
        "batches/b0001",
        BatchState.PENDING,
        "pending",
        1,
        5,
    )


def test_create_from_a_file(client: GeminiClient, fake: FakeGemini):
    name = fake.add_file(b'{"key": "a", "request": {"content": {"parts": [{"text": "x"}]}}}\n')
    batch = client.create_embedding_batch(
        model="models/gemini-embedding-001", display_name="F", file_name=name
    )
    body = json.loads(fake.requests[-1].content)
    assert body["batch"]["inputConfig"] == {"fileName": name}
    assert batch.request_count == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"display_name": "x"},
        {"display_name": "x", "inline_requests": [], "file_name": "files/a"},
        {"display_name": "", "file_name": "files/a"},
        {"display_name": "x", "inline_requests": [{"request": {}}]},
        {"display_name": "x", "file_name": "files/a", "priority": "high"},
    ],
)
def test_create_refuses_bad_arguments_without_calling(client: GeminiClient, fake: FakeGemini, kwargs):
    with pytest.raises(InvalidArgumentError):
        client.create_embedding_batch(model="gemini-embedding-001", **kwargs)
    assert fake.requests == []


# -- submit ----------------------------------------------------------------------------------------------


def test_submit_small_batch_goes_inline_with_positional_keys(client: GeminiClient, fake: FakeGemini):
    batch = client.submit_embedding_batch(
        ["alpha", "beta"],
        display_name="Docs",
        task_type="retrieval-document",
        output_dimensionality=768,
        title="T",
    )
    requests = json.loads(fake.requests[0].content)["batch"]["inputConfig"]["requests"]["requests"]
    assert [r["metadata"]["key"] for r in requests] == ["0", "1"]
    assert requests[1]["request"] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "beta"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "title": "T",
        "outputDimensionality": 768,
    }
    assert not fake.requests_to("upload")
    assert batch.request_count == 2


def test_submit_over_the_inline_limit_uploads_a_jsonl_file(fake: FakeGemini, clock: FakeClock):
    items = [EmbedItem("doc-1", "first text"), EmbedItem("doc-2", "second text", title="Second")]
    with make_client(fake.handler, clock, inline_limit_bytes=200) as client:
        batch = client.submit_embedding_batch(
            items, display_name="Big", task_type="RETRIEVAL_DOCUMENT", priority=-1
        )
    [start] = fake.requests_to("/upload/v1beta/files")
    assert start.headers["x-goog-upload-header-content-type"] == "application/jsonl"
    [file_name] = [n for n in fake.files]
    lines = [json.loads(line) for line in fake.files[file_name]["content"].decode().splitlines()]
    assert [line["key"] for line in lines] == ["doc-1", "doc-2"]
    assert lines[1]["request"]["title"] == "Second" and "title" not in lines[0]["request"]
    create = json.loads(fake.requests_to(":asyncBatchEmbedContent")[0].content)
    assert create["batch"] == {"displayName": "Big", "inputConfig": {"fileName": file_name}, "priority": "-1"}
    assert batch.request_count == 2


def test_the_inline_limit_is_measured_on_the_create_body(fake: FakeGemini, clock: FakeClock):
    texts = ["x" * 50] * 3
    probe = GeminiClient(
        API_KEY, base_url=BASE_URL, transport=fake.transport(), sleep=clock.sleep, clock=clock
    )
    probe.submit_embedding_batch(texts, display_name="Probe")
    exact = len(fake.requests[-1].content)
    for limit, uploads in ((exact, 0), (exact - 1, 1)):
        before = len(fake.requests_to("/upload/v1beta/files"))
        with GeminiClient(
            API_KEY, base_url=BASE_URL, transport=fake.transport(), inline_limit_bytes=limit
        ) as client:
            client.submit_embedding_batch(texts, display_name="Probe")
        assert len(fake.requests_to("/upload/v1beta/files")) - before == uploads


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"display_name": ""}, "display_name is required"),
        ({"display_name": "   "}, "display_name is required"),
        ({"display_name": None}, "display_name is required"),
        ({"display_name": "d", "task_type": "retrieval"}, "task_type"),
        ({"display_name": "d", "output_dimensionality": 127}, "128 to 3072"),
        ({"display_name": "d", "output_dimensionality": 3073}, "128 to 3072"),
        ({"display_name": "d", "output_dimensionality": 768.0}, "128 to 3072"),
        ({"display_name": "d", "title": "T"}, "RETRIEVAL_DOCUMENT"),
        ({"display_name": "d", "title": "T", "task_type": "RETRIEVAL_QUERY"}, "RETRIEVAL_DOCUMENT"),
        ({"display_name": "d", "model": ""}, "model"),
    ],
)
def test_submit_validates_options_before_any_call(client: GeminiClient, fake: FakeGemini, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        client.submit_embedding_batch(["a"], **kwargs)
    assert fake.requests == []


def test_submit_validates_items(client: GeminiClient, fake: FakeGemini):
    for items, message in (
        ([], "empty"),
        ("one string", "not one string"),
        ([EmbedItem("k", "a"), EmbedItem("k", "b")], "duplicate key"),
        (["a", 3], "item #1"),
        ([EmbedItem("k", "a", title="T")], "RETRIEVAL_DOCUMENT"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            client.submit_embedding_batch(items, display_name="d")
    assert fake.requests == []


def test_task_type_is_case_insensitive(client: GeminiClient, fake: FakeGemini):
    client.submit_embedding_batch(["a"], display_name="d", task_type="semantic_similarity")
    request = json.loads(fake.requests[0].content)["batch"]["inputConfig"]["requests"]["requests"][0][
        "request"
    ]
    assert request["taskType"] == "SEMANTIC_SIMILARITY"


# -- get, list, cancel, delete -----------------------------------------------------------------------


def test_get_batch_accepts_a_bare_id(client: GeminiClient, fake: FakeGemini):
    created = client.submit_embedding_batch(["a"], display_name="d")
    fake.set_state(created.name, "BATCH_STATE_RUNNING", request_count=1, pending_request_count=1)
    batch = client.get_batch(created.name.removeprefix("batches/"))
    assert (batch.name, batch.status) == (created.name, "processing")


def test_get_missing_batch_is_not_found(client: GeminiClient):
    with pytest.raises(GeminiNotFoundError) as caught:
        client.get_batch("batches/nope")
    assert caught.value.status_code == 404 and caught.value.status == "NOT_FOUND"


def test_list_pages_and_iterate_newest_first(client: GeminiClient, fake: FakeGemini):
    names = [client.submit_embedding_batch([f"t{i}"], display_name=f"job-{i}").name for i in range(5)]
    page = client.list_batches(page_size=2)
    assert [b.name for b in page.batches] == names[::-1][:2]
    assert page.next_page_token == "2"
    assert [b.name for b in client.list_batches(page_size=2, page_token="4").batches] == [names[0]]
    assert [b.name for b in client.iter_batches(page_size=2)] == names[::-1]
    assert [r.url.params.get("pageSize") for r in fake.requests_to("/v1beta/batches") if r.method == "GET"][
        -3:
    ] == ["2", "2", "2"]


def test_cancel_and_delete(client: GeminiClient, fake: FakeGemini):
    name = client.submit_embedding_batch(["a"], display_name="d").name
    client.cancel_batch(name)
    assert client.get_batch(name).state is BatchState.CANCELLED
    assert fake.requests[-2].url.path == f"/v1beta/{name}:cancel" and fake.requests[-2].method == "POST"
    client.delete_batch(name)
    assert fake.requests[-1].method == "DELETE" and name not in fake.batches
    with pytest.raises(GeminiNotFoundError):
        client.delete_batch(name)


# -- await ---------------------------------------------------------------------------------------------


def test_await_polls_at_the_size_based_interval_and_reports_progress(
    client: GeminiClient, fake: FakeGemini, clock: FakeClock
):
    name = client.submit_embedding_batch([f"t{i}" for i in range(150)], display_name="d").name
    script = iter([("BATCH_STATE_RUNNING", 50), ("BATCH_STATE_RUNNING", 120), ("BATCH_STATE_SUCCEEDED", 150)])
    seen: list[tuple[str, float]] = []

    def on_progress(batch):
        seen.append((batch.status, batch.progress_percentage))
        step = next(script, None)
        if step:  # the API moves on between two polls
            fake.set_state(
                name,
                step[0],
                request_count=150,
                successful_request_count=step[1],
                pending_request_count=150 - step[1],
            )

    batch = client.await_completion(name, on_progress=on_progress)
    assert batch.status == "completed"
    assert seen == [
        ("pending", 0.0),
        ("processing", pytest.approx(100 * 50 / 150)),
        ("processing", 80.0),
        ("completed", 100.0),
    ]
    assert clock.sleeps == [5.0, 5.0, 5.0]  # 150 requests: every 5 s


def test_await_returns_any_terminal_state(client: GeminiClient, fake: FakeGemini, clock: FakeClock):
    name = client.submit_embedding_batch(["a"], display_name="d").name
    fake.set_state(name, "BATCH_STATE_EXPIRED")
    assert client.await_completion(name).status == "expired"
    assert clock.sleeps == []


def test_await_times_out_with_the_last_batch_seen(client: GeminiClient, fake: FakeGemini, clock: FakeClock):
    name = client.submit_embedding_batch(["a", "b"], display_name="d").name
    with pytest.raises(AwaitTimeoutError) as caught:
        client.await_completion(name, poll_interval=4.0, timeout=10.0)
    assert clock.sleeps == [4.0, 4.0, 2.0]  # the last wait ends at the deadline, not past it
    assert caught.value.batch.name == name
    assert isinstance(caught.value, RetryableGeminiError)
    assert "pending" in str(caught.value)


def test_await_default_timeout_follows_the_batch_size(
    client: GeminiClient, fake: FakeGemini, clock: FakeClock
):
    name = client.submit_embedding_batch(["a", "b"], display_name="d").name
    with pytest.raises(AwaitTimeoutError):
        client.await_completion(name)
    assert sum(clock.sleeps) == pytest.approx(2 * 1.0 + 120.0)
    assert set(clock.sleeps[:-1]) == {2.0}


# -- results -------------------------------------------------------------------------------------------


def test_inline_results_come_out_of_order_and_are_mapped_by_key(client: GeminiClient, fake: FakeGemini):
    texts = ["alpha", "be", "gamma!"]
    name = client.submit_embedding_batch(texts, display_name="d").name
    fake.complete(name)
    batch = client.get_batch(name)
    assert [r.key for r in client.iter_results(batch)] == ["2", "1", "0"]  # the fake reverses them
    assert client.get_embeddings(batch) == {str(i): vector_for(t) for i, t in enumerate(texts)}
    assert client.failed_items(batch) == []


def test_output_in_the_operation_response_is_read_too(client: GeminiClient, fake: FakeGemini):
    name = client.submit_embedding_batch(["alpha"], display_name="d").name
    fake.complete(name, where="response")
    assert client.get_embeddings(name) == {"0": vector_for("alpha")}


def test_per_item_errors_are_reported_with_keys_for_resubmission(client: GeminiClient, fake: FakeGemini):
    items = [EmbedItem("a", "fine"), EmbedItem("b", "poison"), EmbedItem("c", "fine too")]
    name = client.submit_embedding_batch(items, display_name="d").name
    fake.complete(name, failures={"b": "text too long"})
    batch = client.get_batch(name)
    assert batch.batch_stats.failed_request_count == 1
    assert batch.success_rate == pytest.approx(200 / 3)
    [failed] = client.failed_items(batch)
    assert (failed.key, failed.error.status, failed.error.message) == (
        "b",
        "INVALID_ARGUMENT",
        "text too long",
    )
    assert set(client.get_embeddings(batch)) == {"a", "c"}
    by_key = {item.key: item for item in items}
    retry = client.submit_embedding_batch(
        [by_key[f.key] for f in client.failed_items(batch)], display_name="d retry"
    )
    assert json.loads(fake.requests[-1].content)["batch"]["inputConfig"]["requests"]["requests"][0][
        "metadata"
    ] == {"key": "b"}
    assert retry.request_count == 1


@pytest.mark.parametrize(
    "state",
    [
        "BATCH_STATE_PENDING",
        "BATCH_STATE_RUNNING",
        "BATCH_STATE_FAILED",
        "BATCH_STATE_CANCELLED",
        "BATCH_STATE_EXPIRED",
    ],
)
def test_results_of_an_unfinished_or_failed_batch_are_refused_at_once(
    client: GeminiClient, fake: FakeGemini, state
):
    name = client.submit_embedding_batch(["a"], display_name="d").name
    fake.set_state(name, state)
    with pytest.raises(
        BatchNotCompleteError, match=r"Batch not yet completed \(current state: \w+\)"
    ) as caught:
        client.iter_results(name)
    assert caught.value.batch.state == BatchState(state)
    with pytest.raises(BatchNotCompleteError):
        client.get_embeddings(name)


def test_a_listed_batch_is_fetched_again_for_its_output(client: GeminiClient, fake: FakeGemini):
    name = client.submit_embedding_batch(["alpha"], display_name="d").name
    fake.complete(name)
    [listed] = client.list_batches().batches
    assert listed.inlined_responses is None  # listings skip outputs
    assert client.get_embeddings(listed) == {"0": vector_for("alpha")}


def test_file_results_are_streamed_line_by_line(fake: FakeGemini, clock: FakeClock):
    texts = [f"text number {i}" for i in range(40)]
    with GeminiClient(
        API_KEY, base_url=BASE_URL, transport=fake.transport(), inline_limit_bytes=100
    ) as client:
        name = client.submit_embedding_batch(texts, display_name="d").name
        fake.complete(name, failures={"7": "bad"})
        fake.download_piece_size = 16
        batch = client.get_batch(name)
        assert batch.responses_file and batch.inlined_responses is None
        results = client.iter_results(batch)
        first = next(results)
        stream = fake.streams[-1]
        assert first.key == "39"
        assert stream.served < len(stream.pieces) / 10  # the rest is still on the wire
        rest = list(results)
    download = fake.requests_to(":download")[-1]
    assert download.url.path == f"/download/v1beta/{batch.responses_file}:download"
    assert download.url.params["alt"] == "media" and "key" not in download.url.params
    assert download.headers["x-goog-api-key"] == API_KEY
    assert stream.served == len(stream.pieces)
    everything = [first, *rest]
    assert len(everything) == 40
    assert {r.key: r.values for r in everything if r.ok} == {
        str(i): vector_for(t) for i, t in enumerate(texts) if i != 7
    }
    assert [r.key for r in everything if not r.ok] == ["7"]


def test_a_malformed_results_line_names_its_line(client: GeminiClient, fake: FakeGemini):
    name = client.submit_embedding_batch(["a"], display_name="d").name
    fake.set_state(name, "BATCH_STATE_SUCCEEDED")
    fake.batches[name]["metadata"]["output"] = {
        "responsesFile": fake.add_file(
            b'{"key": "0", "response": {"embedding": {"values": [1]}}}\n\nnot json\n'
        )
    }
    results = client.iter_results(name)
    assert next(results).key == "0"
    with pytest.raises(PermanentGeminiError, match="line 3 of files/"):
        next(results)


def test_download_file_streams_bytes(client: GeminiClient, fake: FakeGemini):
    content = bytes(range(256)) * 3
    name = fake.add_file(content)
    assert b"".join(client.download_file(name)) == content
    assert client.get_file(name).size_bytes == len(content)
    client.delete_file(name)
    with pytest.raises(GeminiNotFoundError):
        client.get_file(name)
