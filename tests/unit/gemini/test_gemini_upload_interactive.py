"""The resumable upload and the interactive embedding calls."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from shared.gemini import GeminiClient, InvalidArgumentError, PermanentGeminiError, RetryableGeminiError
from tests.unit.gemini.gemini_fakes import API_KEY, FakeClock, FakeGemini, error_response, vector_for

# -- upload -------------------------------------------------------------------------------------------


def test_resumable_upload_protocol(client: GeminiClient, fake: FakeGemini):
    data = b"0123456789" * 25  # 250 bytes
    file = client.upload_file(data, size=len(data), display_name="requests.jsonl", chunk_size=100)
    start, *chunks = fake.requests
    assert start.method == "POST" and start.url.path == "/upload/v1beta/files"
    assert {
        k: start.headers[k]
        for k in (
            "x-goog-upload-protocol",
            "x-goog-upload-command",
            "x-goog-upload-header-content-length",
            "x-goog-upload-header-content-type",
        )
    } == {
        "x-goog-upload-protocol": "resumable",
        "x-goog-upload-command": "start",
        "x-goog-upload-header-content-length": "250",
        "x-goog-upload-header-content-type": "application/jsonl",
    }
    assert start.headers["x-goog-api-key"] == API_KEY
    assert json.loads(start.content) == {"file": {"displayName": "requests.jsonl"}}
    assert [
        (c.headers["x-goog-upload-command"], c.headers["x-goog-upload-offset"], len(c.content))
        for c in chunks
    ] == [
        ("upload", "0", 100),
        ("upload", "100", 100),
        ("upload, finalize", "200", 50),
    ]
    for chunk in chunks:
        assert chunk.url.host == "gemini.test"  # the configured host, not the one the session named
        assert chunk.url.params["upload_id"]
        assert "x-goog-api-key" not in chunk.headers and "key" not in chunk.url.params
        assert API_KEY not in str(chunk.url) and API_KEY not in str(chunk.headers)
    assert fake.files[file.name]["content"] == data
    assert (file.size_bytes, file.display_name, file.mime_type, file.state) == (
        250,
        "requests.jsonl",
        "application/jsonl",
        "ACTIVE",
    )


def test_upload_from_a_stream_of_uneven_pieces_sends_even_chunks(client: GeminiClient, fake: FakeGemini):
    pieces = [b"a" * 7, b"b" * 130, b"", b"c" * 3, b"d" * 60]  # 200 bytes
    file = client.upload_file(iter(pieces), size=200, display_name="x", chunk_size=64)
    sizes = [len(r.content) for r in fake.requests_to("/upload-session/")]
    assert sizes == [64, 64, 64, 8]
    assert fake.files[file.name]["content"] == b"".join(pieces)


def test_upload_from_a_file_object(client: GeminiClient, fake: FakeGemini):
    data = bytes(range(256)) * 4
    file = client.upload_file(
        io.BytesIO(data), size=len(data), display_name="x", chunk_size=300, mime_type="text/plain"
    )
    assert fake.files[file.name]["content"] == data
    assert fake.files[file.name]["resource"]["mimeType"] == "text/plain"


class CountingSource:
    """An iterable of equal pieces that counts how many bytes it has handed out."""

    def __init__(self, total: int, piece: int):
        self.total, self.piece = total, piece
        self.produced = 0

    def __iter__(self):
        while self.produced < self.total:
            self.produced += self.piece
            yield b"x" * self.piece


def test_upload_holds_one_chunk_at_a_time(fake: FakeGemini, clock: FakeClock):
    source = CountingSource(total=1000, piece=50)
    read_ahead: list[int] = []

    def spy(request: httpx.Request) -> httpx.Response:
        if "/upload-session/" in request.url.path:
            sent = int(request.headers["x-goog-upload-offset"]) + len(request.content)
            read_ahead.append(source.produced - sent)
        return fake.handler(request)

    with GeminiClient(API_KEY, base_url="https://gemini.test", transport=httpx.MockTransport(spy)) as client:
        client.upload_file(source, size=1000, display_name="x", chunk_size=200)
    assert len(read_ahead) == 5 and max(read_ahead) < 200


def test_chunk_size_follows_the_servers_granularity(fake: FakeGemini):
    def granular(request: httpx.Request) -> httpx.Response:
        response = fake.handler(request)
        if request.url.path == "/upload/v1beta/files":
            response.headers["X-Goog-Upload-Chunk-Granularity"] = "64"
        return response

    with GeminiClient(
        API_KEY, base_url="https://gemini.test", transport=httpx.MockTransport(granular)
    ) as client:
        client.upload_file(b"z" * 300, size=300, display_name="x", chunk_size=100)
    assert [len(r.content) for r in fake.requests_to("/upload-session/")] == [64, 64, 64, 64, 44]


def test_an_empty_file_is_finalized_at_once(client: GeminiClient, fake: FakeGemini):
    file = client.upload_file(b"", size=0, display_name="empty")
    [chunk] = fake.requests_to("/upload-session/")
    assert chunk.headers["x-goog-upload-command"] == "upload, finalize" and chunk.content == b""
    assert file.size_bytes == 0


@pytest.mark.parametrize(
    ("data", "size", "message"), [(b"abc", 5, "ended after 3"), (b"abcdef", 4, "longer than size")]
)
def test_upload_size_must_match_the_source(client: GeminiClient, data: bytes, size: int, message: str):
    with pytest.raises(InvalidArgumentError, match=message):
        client.upload_file(data, size=size, display_name="x", chunk_size=2)


def test_upload_arguments_are_checked_first(client: GeminiClient, fake: FakeGemini):
    for kwargs in (
        {"size": -1, "display_name": "x"},
        {"size": 1, "display_name": ""},
        {"size": 1, "display_name": "x", "chunk_size": 0},
    ):
        with pytest.raises(InvalidArgumentError):
            client.upload_file(b"a", **kwargs)
    assert fake.requests == []


def test_a_failed_chunk_is_not_resent(client: GeminiClient, fake: FakeGemini, clock: FakeClock):
    fake.faults.append(
        lambda r: (
            error_response(503, "UNAVAILABLE", "x") if r.headers.get("x-goog-upload-offset") == "4" else None
        )
    )
    with pytest.raises(RetryableGeminiError):
        client.upload_file(b"12345678", size=8, display_name="x", chunk_size=4)
    assert [r.headers["x-goog-upload-offset"] for r in fake.requests_to("/upload-session/")] == ["0", "4"]
    assert clock.sleeps == []


def test_the_start_call_is_retried(client: GeminiClient, fake: FakeGemini, clock: FakeClock):
    failures = iter([error_response(503, "UNAVAILABLE", "x")])
    fake.faults.append(lambda r: next(failures, None) if r.url.path == "/upload/v1beta/files" else None)
    file = client.upload_file(b"abc", size=3, display_name="x")
    assert len(fake.requests_to("/upload/v1beta/files")) == 2 and len(clock.sleeps) == 1
    assert fake.files[file.name]["content"] == b"abc"


def test_a_start_without_session_url_is_an_error(client: GeminiClient, fake: FakeGemini):
    fake.faults.append(
        lambda r: httpx.Response(200, json={}) if r.url.path == "/upload/v1beta/files" else None
    )
    with pytest.raises(PermanentGeminiError, match="X-Goog-Upload-URL"):
        client.upload_file(b"abc", size=3, display_name="x")


# -- interactive ----------------------------------------------------------------------------------------


def test_embed_content(client: GeminiClient, fake: FakeGemini):
    values = client.embed_content("hello", task_type="retrieval_query", output_dimensionality=256)
    [request] = fake.requests
    assert request.url.path == "/v1beta/models/gemini-embedding-001:embedContent"
    assert json.loads(request.content) == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "hello"}]},
        "taskType": "RETRIEVAL_QUERY",
        "outputDimensionality": 256,
    }
    assert values == vector_for("hello")


def test_batch_embed_contents_splits_into_calls_of_100_and_keeps_order(
    client: GeminiClient, fake: FakeGemini
):
    texts = [f"t{'x' * (i % 7)}{i}" for i in range(250)]
    vectors = client.batch_embed_contents(texts, model="models/gemini-embedding-001", task_type="CLUSTERING")
    calls = fake.requests_to(":batchEmbedContents")
    assert [len(json.loads(c.content)["requests"]) for c in calls] == [100, 100, 50]
    assert json.loads(calls[0].content)["requests"][0]["taskType"] == "CLUSTERING"
    assert vectors == [vector_for(t) for t in texts]


def test_batch_embed_contents_refuses_a_short_answer(client: GeminiClient, fake: FakeGemini):
    fake.faults.append(lambda r: httpx.Response(200, json={"embeddings": [{"values": [1.0]}]}))
    with pytest.raises(PermanentGeminiError, match="1 embeddings for 2 texts"):
        client.batch_embed_contents(["a", "b"])


def test_interactive_calls_validate_options(client: GeminiClient, fake: FakeGemini):
    with pytest.raises(InvalidArgumentError):
        client.embed_content("a", output_dimensionality=64)
    with pytest.raises(InvalidArgumentError):
        client.batch_embed_contents(["a"], title="T", task_type="RETRIEVAL_QUERY")
    assert fake.requests == []
