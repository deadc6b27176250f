"""Embedding batches over HTTP: the Operation, inline results, paging, priority, cancel, delete, fates."""

from __future__ import annotations

import time

import numpy as np

from tests.emulator.emulator_helpers import MODEL, create, inline_body, wait_for, wait_state

CREATE = f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"


def embed(api, text: str, dims: int) -> np.ndarray:
    body = {"content": {"parts": [{"text": text}]}, "outputDimensionality": dims}
    return np.array(api.post(f"/v1beta/models/{MODEL}:embedContent", json=body).json()["embedding"]["values"])


def test_create_returns_a_pending_operation(api):
    op = create(api, inline_body(["a", "b", "c"], display_name="three", priority="4"))
    assert op["name"].startswith("batches/") and "done" not in op
    meta = op["metadata"]
    assert meta["@type"] == "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatch"
    assert (meta["model"], meta["displayName"], meta["priority"]) == (f"models/{MODEL}", "three", "4")
    assert meta["state"] in {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"}
    assert meta["batchStats"]["requestCount"] == "3"
    assert meta["createTime"].endswith("Z") and "endTime" not in meta


def test_an_inline_batch_succeeds_with_results_mapped_by_metadata(api):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'stocks'}" for i in range(9)] + [""]
    op = wait_state(api, create(api, inline_body(texts, dims=256))["name"])
    meta = op["metadata"]
    assert meta["state"] == "BATCH_STATE_SUCCEEDED" and op["done"] is True and "error" not in op
    assert meta["batchStats"] == {
        "requestCount": "10",
        "successfulRequestCount": "9",
        "failedRequestCount": "1",
    }
    assert meta["endTime"] >= meta["createTime"]
    entries = meta["output"]["inlinedResponses"]["inlinedResponses"]
    assert op["response"]["inlinedResponses"]["inlinedResponses"] == entries  # both places, as the API does
    assert op["response"]["@type"].endswith("EmbedContentBatchOutput")
    keys = [e["metadata"]["key"] for e in entries]
    assert sorted(keys, key=int) == [str(i) for i in range(10)]
    assert keys != [str(i) for i in range(10)]  # more than a few items: not in input order
    for entry in entries:
        i = int(entry["metadata"]["key"])
        if texts[i]:
            values = np.array(entry["response"]["embedding"]["values"])
            np.testing.assert_allclose(values, embed(api, texts[i], 256), atol=1e-7)
        else:
            assert entry["error"]["status"] == "INVALID_ARGUMENT" and entry["error"]["code"] == 3
            assert "response" not in entry


def test_metadata_comes_back_exactly_as_sent(api):
    body = inline_body(["x", "y"])
    sent = [{"key": "k-1", "nested": {"n": [1, 2.5, None, True]}}, {"id": 7}]
    for request, metadata in zip(body["batch"]["inputConfig"]["requests"]["requests"], sent, strict=True):
        request["metadata"] = metadata
    body["batch"]["inputConfig"]["requests"]["requests"].append(
        {"request": {"content": {"parts": [{"text": "z"}]}}}
    )
    op = wait_state(api, create(api, body)["name"])
    entries = op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert [e.get("metadata") for e in entries] == [*sent, None]


def test_fields_lets_a_poller_skip_the_outputs(api):
    name = create(api, inline_body(["a", "b"]))["name"]
    wait_state(api, name)
    slim = api.get(f"/v1beta/{name}", params={"fields": "name,done,metadata(state,batchStats)"}).json()
    assert slim == {
        "name": name,
        "done": True,
        "metadata": {
            "state": "BATCH_STATE_SUCCEEDED",
            "batchStats": {"requestCount": "2", "successfulRequestCount": "2"},
        },
    }


def test_list_is_newest_first_with_page_tokens(api):
    names = [create(api, inline_body(["a"], display_name=f"b{i}"))["name"] for i in range(5)]
    first = api.get("/v1beta/batches", params={"pageSize": 2}).json()
    assert [o["name"] for o in first["operations"]] == names[::-1][:2]
    second = api.get("/v1beta/batches", params={"pageSize": 2, "pageToken": first["nextPageToken"]}).json()
    assert [o["name"] for o in second["operations"]] == names[::-1][2:4]
    last = api.get("/v1beta/batches", params={"page_size": 2, "page_token": second["nextPageToken"]}).json()
    assert [o["name"] for o in last["operations"]] == names[:1] and "nextPageToken" not in last
    assert api.get("/v1beta/batches", params={"pageToken": "bogus"}).status_code == 400
    assert api.get("/v1beta/batches", params={"pageSize": "ten"}).status_code == 400


def test_higher_priority_runs_first_then_older(api, emulator):
    emulator.set_faults({"hold_queue": True})
    low = create(api, inline_body(["a"], priority="-5"))["name"]
    mid = create(api, inline_body(["b"]))["name"]
    high_old = create(api, inline_body(["c"], priority="10"))["name"]
    high_new = create(api, inline_body(["d"], priority=10))["name"]
    assert emulator.stats()["batchesStarted"] == []
    emulator.admin("DELETE", "faults")
    for name in (low, mid, high_old, high_new):
        wait_state(api, name)
    started = emulator.stats()["batchesStarted"]
    assert started == [high_old, high_new, mid, low]


def test_progress_is_reported_while_running(api, emulator):
    emulator.set_faults({"seconds_per_item": 0.01})
    name = create(api, inline_body([f"text {i}" for i in range(200)]))["name"]

    def midway() -> dict | None:
        stats = api.get(f"/v1beta/{name}").json()["metadata"]["batchStats"]
        done = int(stats.get("successfulRequestCount", "0"))
        return stats if 0 < done < 200 else None

    stats = wait_for(midway, 30, "partial progress", interval=0.02)
    assert int(stats["pendingRequestCount"]) == 200 - int(stats["successfulRequestCount"])
    emulator.admin("DELETE", "faults")
    assert wait_state(api, name)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"


def test_cancel_a_pending_and_a_running_batch(api, emulator):
    emulator.set_faults({"pending_seconds": 60})
    pending = create(api, inline_body(["a"]))["name"]
    assert api.get(f"/v1beta/{pending}").json()["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert api.post(f"/v1beta/{pending}:cancel").json() == {}
    op = api.get(f"/v1beta/{pending}").json()
    assert op["metadata"]["state"] == "BATCH_STATE_CANCELLED" and op["done"] is True

    emulator.set_faults({"seconds_per_item": 0.02})
    running = create(api, inline_body([f"t{i}" for i in range(300)]))["name"]
    wait_state(api, running, {"BATCH_STATE_RUNNING"})
    api.post(f"/v1beta/{running}:cancel").raise_for_status()
    op = wait_state(api, running)
    assert op["metadata"]["state"] == "BATCH_STATE_CANCELLED" and "output" not in op["metadata"]
    assert int(op["metadata"]["batchStats"].get("successfulRequestCount", "0")) < 300
    assert api.post(f"/v1beta/{running}:cancel").status_code == 200  # best effort, idempotent
    assert api.post("/v1beta/batches/unknown:cancel").status_code == 404


def test_delete_removes_a_batch(api):
    name = create(api, inline_body(["a"]))["name"]
    wait_state(api, name)
    assert api.delete(f"/v1beta/{name}").json() == {}
    response = api.get(f"/v1beta/{name}")
    assert response.status_code == 404 and response.json()["error"]["status"] == "NOT_FOUND"
    assert api.get("/v1beta/batches").json() == {}
    assert api.delete(f"/v1beta/{name}").status_code == 404


def test_expired_and_failed_batches(api, emulator):
    emulator.set_faults({"expire_batches": True})
    expired = wait_state(api, create(api, inline_body(["a"]))["name"])
    assert expired["metadata"]["state"] == "BATCH_STATE_EXPIRED" and expired["done"] is True
    assert "output" not in expired["metadata"] and "response" not in expired and "error" not in expired

    emulator.set_faults({"fail_batches": True})
    failed = wait_state(api, create(api, inline_body(["a"]))["name"])
    assert failed["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert failed["error"]["code"] == 13 and failed["error"]["message"]


def test_item_failures_and_resubmission(api, emulator):
    emulator.set_faults({"item_failure_rate": 1.0, "item_failure_attempts": 1})
    first = wait_state(api, create(api, inline_body(["alpha", "beta"]))["name"])
    assert first["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert first["metadata"]["batchStats"] == {"requestCount": "2", "failedRequestCount": "2"}
    second = wait_state(api, create(api, inline_body(["alpha", "beta"]))["name"])
    assert second["metadata"]["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}

    emulator.set_faults({"fail_texts_containing": "POISON", "item_failure_status": "UNAVAILABLE"})
    op = wait_state(api, create(api, inline_body(["ok", "a POISON text"]))["name"])
    entries = {
        e["metadata"]["key"]: e for e in op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    }
    assert "response" in entries["0"] and entries["1"]["error"]["status"] == "INTERNAL"


def test_pending_seconds_keep_a_batch_pending(api, emulator):
    emulator.set_faults({"pending_seconds": 0.5})
    name = create(api, inline_body(["a"]))["name"]
    assert api.get(f"/v1beta/{name}").json()["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert wait_state(api, name)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"


def test_stats_count_the_calls_of_a_job(api, emulator):
    name = create(api, inline_body(["a"]))["name"]
    wait_state(api, name)
    api.get("/v1beta/batches")
    calls = emulator.stats()["calls"]
    assert calls["creates"] == 1 and calls["lists"] == 1 and calls["gets"] >= 1


def test_the_server_stays_responsive_while_batches_run(api, emulator):
    emulator.set_faults({"seconds_per_item": 0.005})
    names = [create(api, inline_body([f"busy {j} {i}" for i in range(200)]))["name"] for j in range(2)]
    wait_state(api, names[0], {"BATCH_STATE_RUNNING"})
    slowest = 0.0
    for _ in range(20):
        started = time.perf_counter()
        assert api.get(f"/v1beta/{names[0]}", params={"fields": "metadata.state"}).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.5, f"a GET took {slowest:.2f}s while batches ran"
    started = time.perf_counter()
    body = {"content": {"parts": [{"text": "an interactive call meanwhile"}]}, "outputDimensionality": 128}
    assert api.post(f"/v1beta/models/{MODEL}:embedContent", json=body).status_code == 200
    assert time.perf_counter() - started < 5.0  # waits for at most one model batch
    emulator.admin("DELETE", "faults")
    for name in names:
        assert wait_state(api, name)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
