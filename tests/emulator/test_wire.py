"""Wire parsing: both field spellings, unknown fields, request bodies, field masks, paging, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from infra.local.gemini_emulator.faults import BatchFate
from infra.local.gemini_emulator.schema import check_model, parse_create, parse_embed_request, parse_file_line
from infra.local.gemini_emulator.store import Batch, ItemResult, State, Store, _page
from infra.local.gemini_emulator.wire import (
    ApiError,
    apply_field_mask,
    camel,
    check_fields,
    dumps,
    field,
    loads,
    page_token,
    parse_page_token,
    rfc3339,
    snake,
)

MODEL = "models/gemini-embedding-001"


def request(text: str = "hello", **extra) -> dict:
    return {"content": {"parts": [{"text": text}]}, **extra}


def test_names_convert_both_ways_and_either_spelling_is_read():
    assert camel("output_dimensionality") == "outputDimensionality" == camel("outputDimensionality")
    assert snake("outputDimensionality") == "output_dimensionality"
    assert field({"output_dimensionality": 7}, "outputDimensionality") == 7
    assert field({"outputDimensionality": 8}, "outputDimensionality") == 8
    assert field({}, "taskType", "x") == "x"


def test_unknown_fields_are_refused_like_google_does():
    with pytest.raises(ApiError, match="Unknown name \"outputDimension\" at 'batch'"):
        check_fields({"outputDimension": 1}, {"outputDimensionality"}, "batch")
    with pytest.raises(ApiError, match="Expected an object"):
        check_fields([1], {"a"}, "batch")


def test_embed_requests_in_both_spellings_give_the_same_item():
    camel_item = parse_embed_request(request(taskType="RETRIEVAL_QUERY", outputDimensionality=768), "r")
    snake_item = parse_embed_request(request(task_type="RETRIEVAL_QUERY", output_dimensionality="768"), "r")
    assert camel_item == snake_item
    assert (camel_item.text, camel_item.dims, camel_item.task_type) == ("hello", 768, "RETRIEVAL_QUERY")
    assert parse_embed_request(request(), "r").dims == 3072  # the default


def test_text_parts_are_joined_and_a_title_only_counts_for_documents():
    two = {"content": {"parts": [{"text": "a"}, {"inline_data": {}}, {"text": "b"}]}}
    assert parse_embed_request(two, "r").text == "a\nb"
    doc = parse_embed_request(request("body", title="Title", taskType="RETRIEVAL_DOCUMENT"), "r")
    assert doc.text == "Title\nbody"
    assert parse_embed_request(request("body", title="Title"), "r").text == "body"
    assert parse_embed_request({"content": {"parts": []}}, "r").empty
    assert parse_embed_request(request("  \n "), "r").empty


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (request(outputDimensionality=64), "between 128 and 3072"),
        (request(outputDimensionality=3073), "between 128 and 3072"),
        (request(outputDimensionality="many"), "TYPE_INT32"),
        (request(taskType="SEARCH"), "TaskType"),
        (request(model="models/other"), "does not match"),
        ({"content": {"parts": [{"text": 3}]}}, "TYPE_STRING"),
        ({"content": {"parts": [{"txt": "a"}]}}, 'Unknown name "txt"'),
    ],
)
def test_bad_embed_requests_are_400s(body, message):
    with pytest.raises(ApiError, match=message) as caught:
        parse_embed_request(body, "r", strict=True, model=MODEL)
    assert caught.value.code == 400


def test_lenient_mode_accepts_small_dimensions_and_no_display_name():
    assert parse_embed_request(request(outputDimensionality=64), "r", strict=False).dims == 64
    body = {"batch": {"input_config": {"file_name": "files/abc"}}}
    assert parse_create(body, MODEL, strict=False).display_name == ""
    with pytest.raises(ApiError, match="display_name is required"):
        parse_create(body, MODEL, strict=True)


def test_create_bodies_inline_and_file():
    inline = parse_create(
        {
            "batch": {
                "display_name": "d",
                "priority": "-3",
                "input_config": {
                    "requests": {"requests": [{"request": request("x"), "metadata": {"key": "k"}}]}
                },
            }
        },
        MODEL,
    )
    assert (inline.display_name, inline.priority, inline.file_name) == ("d", -3, None)
    assert inline.requests[0].metadata == {"key": "k"} and inline.requests[0].item.text == "x"
    by_file = parse_create(
        {"batch": {"displayName": "d", "inputConfig": {"fileName": "files/abc"}, "priority": 5}}, MODEL
    )
    assert (by_file.file_name, by_file.priority, by_file.requests) == ("files/abc", 5, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"batch": {"displayName": "d", "inputConfig": {}}}, "exactly one of"),
        ({"batch": {"displayName": "d", "inputConfig": {"fileName": "abc"}}}, "files/"),
        ({"batch": {"displayName": "d", "inputConfig": {"requests": {"requests": []}}}}, "at least one"),
        (
            {"batch": {"displayName": "d", "priority": "high", "inputConfig": {"fileName": "files/a"}}},
            "TYPE_INT64",
        ),
        (
            {"batch": {"displayName": "d", "inputConfig": {"fileName": "files/a"}, "colour": 1}},
            'Unknown name "colour"',
        ),
        ({"batches": {}}, 'Unknown name "batches"'),
        (
            {
                "batch": {
                    "displayName": "d",
                    "inputConfig": {"requests": {"requests": [{"request": request(taskType="X")}]}},
                }
            },
            "requests.requests\\[0\\].request.task_type",
        ),
    ],
)
def test_structural_problems_in_create_are_400s_naming_the_field(body, message):
    with pytest.raises(ApiError, match=message):
        parse_create(body, MODEL)


def test_file_lines():
    key, item = parse_file_line(
        {"key": "k1", "request": request("t", output_dimensionality=256)}, 3, True, MODEL
    )
    assert (key, item.text, item.dims) == ("k1", "t", 256)
    with pytest.raises(ApiError, match="line 4: request is required"):
        parse_file_line({"key": "k"}, 4, True, MODEL)


def test_model_names():
    assert check_model("gemini-embedding-001", "embedContent", "v1beta") == MODEL
    assert check_model("models/text-embedding-004", "embedContent", "v1beta") == "models/text-embedding-004"
    for generative in ("gemini-2.5-flash", "models/gemma-3-1b-it", "gemini-pro"):
        with pytest.raises(ApiError, match="is not found for API version v1beta") as caught:
            check_model(generative, "embedContent", "v1beta")
        assert caught.value.code == 404
    with pytest.raises(ApiError, match="Invalid model name"):
        check_model("models/", "embedContent", "v1beta")


def test_field_masks():
    op = {
        "name": "b",
        "metadata": {"state": "S", "batchStats": {"requestCount": "2"}, "output": {"big": [1] * 5}},
        "done": True,
    }
    assert apply_field_mask(op, "metadata.state,done") == {"metadata": {"state": "S"}, "done": True}
    assert apply_field_mask(op, "name,metadata(state,batchStats)") == {
        "name": "b",
        "metadata": {"state": "S", "batchStats": {"requestCount": "2"}},
    }
    assert apply_field_mask(op, "metadata/batch_stats/request_count") == {
        "metadata": {"batchStats": {"requestCount": "2"}}
    }
    assert apply_field_mask({"operations": [op, op]}, "operations(name)") == {
        "operations": [{"name": "b"}, {"name": "b"}]
    }
    assert apply_field_mask(op, None) is op
    with pytest.raises(ApiError, match="unbalanced"):
        apply_field_mask(op, "metadata(state")


def test_page_tokens_round_trip_and_foreign_ones_are_400s():
    assert parse_page_token(page_token(41)) == 41
    with pytest.raises(ApiError, match="Invalid page token"):
        parse_page_token("garbage!")


class _Seq:
    def __init__(self, seq: int) -> None:
        self.seq = seq


def test_paging_is_newest_first_and_stable_under_inserts():
    items = [_Seq(i) for i in range(1, 26)]
    first, token = _page(items, 10, None)
    assert [x.seq for x in first] == list(range(25, 15, -1))
    items.append(_Seq(26))  # a newer item does not shift later pages
    second, token = _page(items, 10, token)
    assert [x.seq for x in second] == list(range(15, 5, -1))
    third, token = _page(items, 10, token)
    assert [x.seq for x in third] == [5, 4, 3, 2, 1] and token is None
    assert len(_page(items, None, None)[0]) == 10  # default page size
    with pytest.raises(ApiError):
        _page(items, -1, None)


def test_operations_render_proto3_json(tmp_path):
    batch = Batch(
        id="b1",
        model=MODEL,
        display_name="d",
        priority=0,
        seq=1,
        fate=BatchFate(),
        not_before=0.0,
        create_time=0.0,
    )
    batch.request_count = 2
    pending = batch.operation()
    assert "done" not in pending and "error" not in pending and "response" not in pending
    assert pending["metadata"]["batchStats"] == {"requestCount": "2", "pendingRequestCount": "2"}
    assert "priority" not in pending["metadata"]  # 0 is the default, left out as the live API does
    assert batch.operation(emit_defaults=True)["metadata"]["batchStats"]["failedRequestCount"] == "0"
    assert batch.operation(emit_defaults=True)["done"] is False

    batch.state, batch.succeeded, batch.failed, batch.priority = State.SUCCEEDED, 1, 1, 7
    batch.results = [
        ItemResult(vector=np.array([0.5, -0.25], dtype=np.float32)),
        ItemResult(error={"code": 3, "message": "m"}),
    ]
    batch.result_metadata = [{"key": "a"}, None]
    done = loads(dumps(batch.operation()))
    assert done["done"] is True and done["metadata"]["priority"] == "7"
    entries = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert entries == [
        {"metadata": {"key": "a"}, "response": {"embedding": {"values": [0.5, -0.25]}}},
        {"error": {"code": 3, "message": "m"}},
    ]
    assert done["response"]["@type"].endswith("EmbedContentBatchOutput")
    assert done["response"]["inlinedResponses"] == done["metadata"]["output"]["inlinedResponses"]
    store = Store(tmp_path)
    assert store.files_dir.is_dir() and rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_store_errors_match_the_live_api(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ApiError) as missing_batch:
        store.batch("nope")
    assert (missing_batch.value.code, missing_batch.value.status) == (404, "NOT_FOUND")
    with pytest.raises(ApiError) as missing_file:
        store.file("nope")
    assert (missing_file.value.code, missing_file.value.status) == (403, "PERMISSION_DENIED")
    assert "or it may not exist" in missing_file.value.message
