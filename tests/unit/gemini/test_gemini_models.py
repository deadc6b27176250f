from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.gemini.models import (
    BatchState,
    BatchStats,
    EmbedContentRequest,
    EmbeddingBatch,
    File,
    ResultFormatError,
    Status,
    TaskType,
    parse_result,
)

FRIENDLY = {
    "BATCH_STATE_UNSPECIFIED": ("pending", False),
    "BATCH_STATE_PENDING": ("pending", False),
    "BATCH_STATE_RUNNING": ("processing", False),
    "BATCH_STATE_SUCCEEDED": ("completed", True),
    "BATCH_STATE_FAILED": ("failed", True),
    "BATCH_STATE_CANCELLED": ("cancelled", True),
    "BATCH_STATE_EXPIRED": ("expired", True),
}


def operation(state: str = "BATCH_STATE_RUNNING", **metadata) -> dict:
    return {
        "name": "batches/abc",
        "metadata": {"displayName": "Docs", "state": state, **metadata},
        "done": False,
    }


@pytest.mark.parametrize(("wire", "expected"), FRIENDLY.items())
def test_every_state_parses_and_has_the_guides_name(wire, expected):
    batch = EmbeddingBatch.from_operation(operation(wire))
    assert batch.state == BatchState(wire)
    assert (batch.status, batch.is_terminal) == expected


@pytest.mark.parametrize(
    ("spelling", "state"),
    [
        ("JOB_STATE_SUCCEEDED", BatchState.SUCCEEDED),
        ("JOB_STATE_RUNNING", BatchState.RUNNING),
        ("JOB_STATE_PENDING", BatchState.PENDING),
        ("JOB_STATE_QUEUED", BatchState.PENDING),
        ("JOB_STATE_CANCELLING", BatchState.RUNNING),
        ("JOB_STATE_EXPIRED", BatchState.EXPIRED),
        ("batch_state_failed", BatchState.FAILED),
        ("SOMETHING_NEW", BatchState.UNSPECIFIED),
    ],
)
def test_sdk_spellings_and_unknown_states(spelling, state):
    assert BatchState(spelling) is state


def test_int64_strings_become_ints_and_wire_names_are_kept():
    batch = EmbeddingBatch.from_operation(
        operation(
            model="models/gemini-embedding-001",
            priority="-3",
            createTime="2025-11-25T12:00:00.123456789Z",
            batchStats={
                "requestCount": "10",
                "successfulRequestCount": "6",
                "failedRequestCount": "2",
                "pendingRequestCount": "2",
            },
        )
    )
    assert batch.priority == -3
    assert batch.batch_stats == BatchStats(
        request_count=10, successful_request_count=6, failed_request_count=2, pending_request_count=2
    )
    assert batch.create_time == datetime(2025, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    assert batch.model_dump(by_alias=True, include={"display_name", "batch_stats"}) == {
        "displayName": "Docs",
        "batchStats": {
            "requestCount": 10,
            "successfulRequestCount": 6,
            "failedRequestCount": 2,
            "pendingRequestCount": 2,
        },
    }


def test_progress_and_success_rate():
    stats = BatchStats(
        request_count=100, successful_request_count=75, failed_request_count=5, pending_request_count=20
    )
    assert stats.progress_percentage == pytest.approx(80.0)
    assert stats.success_rate == pytest.approx(93.75)  # over the 80 finished, not the 100


def test_rates_of_an_empty_or_unstarted_batch_do_not_divide_by_zero():
    assert BatchStats().progress_percentage == 0.0
    assert BatchStats().success_rate is None
    assert BatchStats(request_count=5, pending_request_count=5).success_rate is None
    assert BatchStats(request_count=2, failed_request_count=2).success_rate == 0.0
    unstarted = EmbeddingBatch.from_operation(operation("BATCH_STATE_PENDING"))
    assert unstarted.batch_stats is None
    assert (unstarted.progress_percentage, unstarted.success_rate, unstarted.request_count) == (0.0, None, 0)


def test_progress_never_exceeds_100_even_if_counts_disagree():
    assert BatchStats(request_count=2, successful_request_count=3).progress_percentage == 100.0


def test_output_is_read_from_metadata_or_from_the_operation_response():
    inline = {
        "inlinedResponses": {
            "inlinedResponses": [{"metadata": {"key": "a"}, "response": {"embedding": {"values": [1, 2]}}}]
        }
    }
    from_metadata = EmbeddingBatch.from_operation(operation("BATCH_STATE_SUCCEEDED", output=inline))
    from_response = EmbeddingBatch.from_operation(
        {**operation("BATCH_STATE_SUCCEEDED"), "done": True, "response": {"@type": "x", **inline}}
    )
    wrapped = EmbeddingBatch.from_operation(
        {**operation("BATCH_STATE_SUCCEEDED"), "response": {"output": {"responsesFile": "files/r"}}}
    )
    assert from_metadata.inlined_responses == from_response.inlined_responses
    assert from_metadata.inlined_responses[0].values == [1.0, 2.0]
    assert from_response.done is True
    assert wrapped.responses_file == "files/r" and wrapped.inlined_responses is None


def test_inline_responses_under_the_sdks_embedding_name_are_read():
    output = {
        "inlinedEmbedContentResponses": {
            "inlinedResponses": [{"metadata": {"key": "k"}, "error": {"code": 8, "message": "quota"}}]
        }
    }
    batch = EmbeddingBatch.from_operation(operation("BATCH_STATE_SUCCEEDED", output=output))
    [result] = batch.inlined_responses
    assert (result.key, result.ok, result.error.name) == ("k", False, "RESOURCE_EXHAUSTED")


def test_an_empty_inline_container_means_no_results_not_no_output():
    batch = EmbeddingBatch.from_operation(operation("BATCH_STATE_SUCCEEDED", output={"inlinedResponses": {}}))
    assert batch.inlined_responses == [] and batch.responses_file is None


def test_operation_error_is_parsed():
    batch = EmbeddingBatch.from_operation(
        {**operation("BATCH_STATE_FAILED"), "error": {"code": 13, "message": "boom"}}
    )
    assert batch.error == Status(code=13, message="boom")
    assert batch.error.name == "INTERNAL"


@pytest.mark.parametrize(
    "line",
    [
        {"key": "k1", "response": {"embedding": {"values": [0.5, 1]}}},
        {"metadata": {"key": "k1"}, "response": {"embedding": {"values": [0.5, 1]}}},
        {"key": "k1", "response": {"embeddings": [{"values": [0.5, 1]}]}},
        {"key": "k1", "embedding": {"values": [0.5, 1]}},
    ],
)
def test_result_shapes_are_read_tolerantly(line):
    result = parse_result(line, 0)
    assert (result.key, result.values, result.ok) == ("k1", [0.5, 1.0], True)


def test_result_with_an_error_or_nothing():
    failed = parse_result(
        {"key": 7, "error": {"code": 3, "message": "too long", "status": "INVALID_ARGUMENT"}}, 0
    )
    assert (failed.key, failed.ok, failed.values, failed.error.message) == ("7", False, None, "too long")
    empty = parse_result({"key": "x", "response": {}}, 0)
    assert not empty.ok and empty.error.name == "INTERNAL"


def test_a_result_without_key_is_refused_rather_than_guessed():
    with pytest.raises(ResultFormatError, match="#3"):
        parse_result({"response": {"embedding": {"values": [1]}}}, 3)


def test_embed_request_serialises_to_camel_case_without_unset_fields():
    request = EmbedContentRequest.of_text(
        "hi", model="models/m", task_type=TaskType.RETRIEVAL_DOCUMENT, output_dimensionality=768
    )
    assert request.to_wire() == {
        "model": "models/m",
        "content": {"parts": [{"text": "hi"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "outputDimensionality": 768,
    }
    assert (
        EmbedContentRequest.model_validate(
            {"content": {"parts": [{"text": "x"}]}, "output_dimensionality": 128}
        ).output_dimensionality
        == 128
    )


def test_file_resource():
    file = File.model_validate(
        {
            "name": "files/a",
            "displayName": "in",
            "mimeType": "application/jsonl",
            "sizeBytes": "1234",
            "state": "ACTIVE",
            "uri": "u",
            "createTime": "2025-11-25T12:00:00Z",
            "expirationTime": "2025-11-27T12:00:00Z",
            "unknownNewField": 1,
        }
    )
    assert (file.size_bytes, file.display_name, file.mime_type) == (1234, "in", "application/jsonl")
    assert file.expiration_time == datetime(2025, 11, 27, 12, tzinfo=UTC)
