"""The faults the pipeline's fault model needs, over HTTP: a create whose answer is lost, an undocumented
list order, a failing cancel."""

from __future__ import annotations

import pytest

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

from tests.emulator.emulator_helpers import API_KEY, MODEL, create, inline_body, wait_for, wait_state  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:batches.create_embeddings")
CREATE = f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"


def all_names(api, order_pages: int = 1000, page_size: int = 2) -> list[str]:
    names, token = [], None
    for _ in range(order_pages):
        params = {"pageSize": page_size, **({"pageToken": token} if token else {})}
        page = api.get("/v1beta/batches", params=params).json()
        names += [op["name"] for op in page.get("operations", [])]
        token = page.get("nextPageToken")
        if not token:
            return names
    raise AssertionError("the listing never ended")


@pytest.mark.parametrize("status", [503, 504])
def test_a_lost_create_answer_still_makes_a_batch_that_runs(api, emulator, status):
    emulator.set_faults({"lose_create_response": {"count": 1, "status": status}})
    lost = api.post(CREATE, json=inline_body(["made anyway"], display_name="lost answer"))
    assert lost.status_code == status and lost.json()["error"]["code"] == status
    assert "batches/" not in lost.text  # the client never learns the name
    made = wait_for(lambda: api.get("/v1beta/batches").json().get("operations"), 10, "the batch to be listed")
    assert [op["metadata"]["displayName"] for op in made] == ["lost answer"]
    assert wait_state(api, made[0]["name"])["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    again = api.post(CREATE, json=inline_body(["answered"]))  # only `count` answers are lost
    assert again.status_code == 200
    assert emulator.admin("GET", "faults").json()["lose_create_response"]["count"] == 0


def test_a_refused_create_does_not_use_up_a_lost_answer(api, emulator):
    emulator.set_faults({"lose_create_response": {"count": 1}})
    assert api.post(CREATE, json={"batch": {"displayName": "x"}}).status_code == 400
    assert emulator.admin("GET", "faults").json()["lose_create_response"]["count"] == 1


def test_the_sdk_gets_a_server_error_for_a_lost_answer(api, emulator):
    client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url))
    emulator.set_faults({"lose_create_response": {"count": 1, "status": 503}})
    with pytest.raises(errors.ServerError) as lost:
        client.batches.create_embeddings(
            model=MODEL, src={"inlined_requests": {"contents": ["x"]}}, config={"display_name": "sdk lost"}
        )
    assert lost.value.code == 503
    assert [job.display_name for job in client.batches.list()] == ["sdk lost"]


def test_list_order_newest_oldest_and_random_each_list_every_batch_once(api, emulator):
    emulator.set_faults({"hold_queue": True})
    made = [create(api, inline_body([f"t{i}"]))["name"] for i in range(7)]
    newest = all_names(api)
    assert newest == made[::-1]
    emulator.set_faults({"hold_queue": True, "list_order": "oldest"})
    assert all_names(api) == made
    emulator.set_faults({"hold_queue": True, "list_order": "random"})
    listings = [all_names(api, page_size=3) for _ in range(6)]
    assert all(sorted(names) == sorted(made) for names in listings)  # every batch exactly once
    assert any(names not in (made, made[::-1]) for names in listings)  # and not in either fixed order
    token = api.get("/v1beta/batches", params={"pageSize": 2}).json()["nextPageToken"]
    emulator.set_faults({"hold_queue": True, "list_order": "oldest"})
    stale = api.get("/v1beta/batches", params={"pageSize": 2, "pageToken": token})
    assert stale.status_code == 400 and "Invalid page token" in stale.json()["error"]["message"]


def test_http_5xx_can_fail_cancels_only(api, emulator):
    emulator.set_faults(
        {"pending_seconds": 60, "http_5xx": {"count": 1, "status": 503, "path_contains": ":cancel"}}
    )
    name = create(api, inline_body(["to cancel"]))["name"]
    assert api.get(f"/v1beta/{name}").status_code == 200  # other paths are untouched
    failed = api.post(f"/v1beta/{name}:cancel")
    assert failed.status_code == 503 and failed.json()["error"]["status"] == "UNAVAILABLE"
    assert api.get(f"/v1beta/{name}").json()["metadata"]["state"] == "BATCH_STATE_PENDING"  # nothing happened
    assert api.post(f"/v1beta/{name}:cancel").json() == {}
    assert api.get(f"/v1beta/{name}").json()["metadata"]["state"] == "BATCH_STATE_CANCELLED"
