"""Errors, retries and the API key's secrecy, over one-off handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from shared.errors import PipelineError
from shared.gemini import (
    AwaitTimeoutError,
    BatchNotCompleteError,
    GeminiClient,
    GeminiError,
    GeminiNotFoundError,
    InvalidArgumentError,
    PermanentGeminiError,
    RetryableGeminiError,
)
from shared.gemini.models import EmbeddingBatch
from tests.unit.gemini.gemini_fakes import API_KEY, BASE_URL, FakeClock, error_response, make_client

OPERATION = {"name": "batches/ok", "metadata": {"displayName": "d", "state": "BATCH_STATE_PENDING"}}


def sequence(
    *responses: httpx.Response | Exception,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A handler answering `responses` in turn (an exception is raised), and the requests it saw."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def create(client: GeminiClient) -> EmbeddingBatch:
    return client.create_embedding_batch(
        model="gemini-embedding-001",
        display_name="d",
        inline_requests=[{"key": "a", "request": {"content": {"parts": [{"text": "x"}]}}}],
    )


# -- the tree ------------------------------------------------------------------------------------------


def test_the_error_tree_stands_alone():
    """The client depends on nothing of the pipeline: its adapter maps these errors into the pipeline's."""
    assert issubclass(RetryableGeminiError, GeminiError) and issubclass(PermanentGeminiError, GeminiError)
    assert issubclass(BatchNotCompleteError, PermanentGeminiError)
    assert issubclass(AwaitTimeoutError, RetryableGeminiError)
    assert issubclass(GeminiNotFoundError, PermanentGeminiError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert not issubclass(GeminiError, PipelineError)


# -- HTTP errors -----------------------------------------------------------------------------------------


def test_error_body_and_request_id_are_parsed(clock: FakeClock):
    handler, seen = sequence(
        error_response(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            headers={"x-goog-request-id": "req-42"},
        )
    )
    with make_client(handler, clock) as client, pytest.raises(PermanentGeminiError) as caught:
        client.get_batch("batches/x")
    error = caught.value
    assert (error.status_code, error.status, error.message, error.request_id) == (
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        "req-42",
    )
    assert error.code == "INVALID_ARGUMENT"
    assert (
        str(error)
        == "GET v1beta/batches/x: 400 INVALID_ARGUMENT: Request contains an invalid argument. (request id req-42)"
    )
    assert len(seen) == 1


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409])
def test_4xx_is_permanent_and_not_retried(clock: FakeClock, code: int):
    handler, seen = sequence(error_response(code, "X", "no"))
    with make_client(handler, clock) as client, pytest.raises(PermanentGeminiError):
        client.get_batch("batches/x")
    assert len(seen) == 1 and clock.sleeps == []


def test_a_non_json_error_body_still_makes_a_readable_error(clock: FakeClock):
    handler, _ = sequence(
        httpx.Response(502, text="<html>Bad Gateway</html>", headers={"x-request-id": "r1"})
    )
    with make_client(handler, clock, max_retries=0) as client, pytest.raises(RetryableGeminiError) as caught:
        client.get_batch("batches/x")
    assert (caught.value.status_code, caught.value.status, caught.value.request_id) == (502, None, "r1")
    assert "Bad Gateway" in caught.value.message


def test_429_with_retry_after_is_honoured(clock: FakeClock):
    handler, seen = sequence(
        error_response(429, "RESOURCE_EXHAUSTED", "Quota exceeded", headers={"Retry-After": "17"}),
        error_response(429, "RESOURCE_EXHAUSTED", "Quota exceeded", headers={"Retry-After": "3"}),
        httpx.Response(200, json=OPERATION),
    )
    with make_client(handler, clock) as client:
        assert client.get_batch("batches/ok").name == "batches/ok"
    assert clock.sleeps == [17.0, 3.0]
    assert len(seen) == 3


def test_429_retry_info_in_the_body_is_honoured(clock: FakeClock):
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]
    handler, _ = sequence(
        error_response(429, "RESOURCE_EXHAUSTED", "slow down", details=details),
        httpx.Response(200, json=OPERATION),
    )
    with make_client(handler, clock) as client:
        client.get_batch("batches/ok")
    assert clock.sleeps == [37.0]


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408])
def test_5xx_is_retried_with_backoff_then_exhausted(clock: FakeClock, code: int):
    handler, seen = sequence(error_response(code, "UNAVAILABLE", "try later"))
    with (
        make_client(handler, clock, max_retries=3, rand=lambda: 1.0) as client,
        pytest.raises(RetryableGeminiError) as caught,
    ):
        client.get_batch("batches/x")
    assert len(seen) == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert caught.value.status_code == code


def test_5xx_then_success(clock: FakeClock):
    handler, seen = sequence(error_response(503, "UNAVAILABLE", "x"), httpx.Response(200, json=OPERATION))
    with make_client(handler, clock, rand=lambda: 0.25) as client:
        assert client.get_batch("ok").name == "batches/ok"
    assert clock.sleeps == [0.25] and len(seen) == 2


@pytest.mark.parametrize(
    ("exc", "status", "reached"),
    [
        (httpx.ConnectError("refused"), "UNAVAILABLE", False),
        (httpx.ConnectTimeout("slow connect"), "DEADLINE_EXCEEDED", False),
        (httpx.ReadTimeout("slow read"), "DEADLINE_EXCEEDED", None),
        (httpx.RemoteProtocolError("peer closed"), "UNAVAILABLE", None),
    ],
)
def test_timeouts_and_connection_errors_are_retryable(clock: FakeClock, exc: Exception, status: str, reached):
    handler, seen = sequence(exc)
    with make_client(handler, clock, max_retries=2) as client, pytest.raises(RetryableGeminiError) as caught:
        client.get_batch("batches/x")
    assert len(seen) == 3
    assert (caught.value.status_code, caught.value.status, caught.value.reached_server) == (
        None,
        status,
        reached,
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- create is not idempotent ----------------------------------------------------------------------------


def test_create_is_retried_on_429(clock: FakeClock):
    handler, seen = sequence(
        error_response(429, "RESOURCE_EXHAUSTED", "q", headers={"Retry-After": "2"}),
        httpx.Response(200, json=OPERATION),
    )
    with make_client(handler, clock) as client:
        assert create(client).name == "batches/ok"
    assert len(seen) == 2 and clock.sleeps == [2.0]


def test_create_is_retried_when_the_connection_never_opened(clock: FakeClock):
    handler, seen = sequence(httpx.ConnectError("refused"), httpx.Response(200, json=OPERATION))
    with make_client(handler, clock) as client:
        assert create(client).name == "batches/ok"
    assert len(seen) == 2


@pytest.mark.parametrize(
    "failure",
    [
        error_response(503, "UNAVAILABLE", "x"),
        error_response(500, "INTERNAL", "x"),
        httpx.ReadTimeout("late"),
    ],
)
def test_create_is_not_retried_when_it_may_have_created_a_batch(clock: FakeClock, failure):
    handler, seen = sequence(failure, httpx.Response(200, json=OPERATION))
    with make_client(handler, clock) as client, pytest.raises(RetryableGeminiError):
        create(client)
    assert len(seen) == 1 and clock.sleeps == []


# -- the key ---------------------------------------------------------------------------------------------


def test_the_api_key_goes_in_the_header_only(clock: FakeClock):
    handler, seen = sequence(httpx.Response(200, json=OPERATION))
    with make_client(handler, clock) as client:
        client.get_batch("ok")
    assert seen[0].headers["x-goog-api-key"] == API_KEY
    assert API_KEY not in str(seen[0].url)


def test_the_api_key_never_leaks_into_errors_or_logs(clock: FakeClock, caplog: pytest.LogCaptureFixture):
    leaky = f"https://gemini.test/v1beta/batches/x?key={API_KEY}"
    throttled = error_response(503, "UNAVAILABLE", f"upstream said: API key {API_KEY} is throttled")
    handler, _ = sequence(
        throttled,
        throttled,
        error_response(400, "INVALID_ARGUMENT", f"bad url {leaky}"),
        httpx.ConnectError(f"cannot reach {leaky}"),
    )
    errors: list[GeminiError] = []
    caplog.set_level(logging.DEBUG)
    with make_client(handler, clock, max_retries=1) as client:
        for _ in range(3):
            with pytest.raises(GeminiError) as caught:
                client.get_batch("batches/x")
            errors.append(caught.value)
        assert API_KEY not in repr(client)
    errors.append(GeminiError(f"a url {leaky}", operation=f"GET {leaky}"))
    assert [type(e) for e in errors] == [
        RetryableGeminiError,
        PermanentGeminiError,
        RetryableGeminiError,
        GeminiError,
    ]
    for error in errors:
        for text in (str(error), repr(error), error.message, *map(str, error.args)):
            assert API_KEY not in text
    assert "API key [REDACTED] is throttled" in errors[0].message
    assert all("key=[REDACTED]" in str(e) for e in errors[1:])
    assert caplog.records, "the retries should have been logged"
    for record in caplog.records:
        assert API_KEY not in record.getMessage() and API_KEY not in str(record.__dict__)


def test_from_settings_reads_base_url_and_key():
    from shared.config import Settings

    settings = Settings(
        gemini_api_base_url="http://127.0.0.1:9999/", gemini_api_key=API_KEY, gemini_max_retries=2
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OPERATION)

    with GeminiClient.from_settings(settings, transport=httpx.MockTransport(handler)) as client:
        client.get_batch("ok")
    assert str(seen[0].url) == "http://127.0.0.1:9999/v1beta/batches/ok"
    assert seen[0].headers["x-goog-api-key"] == API_KEY
    assert client.base_url == "http://127.0.0.1:9999" and BASE_URL not in repr(client)


def test_the_client_imports_nothing_of_the_pipeline():
    from pathlib import Path

    import shared.gemini

    for path in Path(shared.gemini.__file__).parent.glob("*.py"):
        text = path.read_text()
        for module in ("shared.domain", "shared.errors", "shared.services", "shared.ports", "shared.config"):
            assert module not in text, f"{path.name} imports {module}: the client must stand alone"
