"""Quotas as the live API enforces them: a 429 RESOURCE_EXHAUSTED (no Retry-After, nothing made) for enqueued
tokens, concurrent batches, file size and storage; atomic reservations; usage and peaks in /_emulator/stats."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:batches.create_embeddings")
genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

from infra.local.gemini_emulator.quotas import Ledger, QuotaError, parse_quotas  # noqa: E402
from tests.emulator.emulator_helpers import (  # noqa: E402
    API_KEY,
    MODEL,
    ROOT,
    create,
    inline_body,
    upload,
    wait_for,
    wait_state,
    wordpieces,
)

CREATE = f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"
FULL_MODEL = f"models/{MODEL}"


def assert_quota_429(response: httpx.Response, quota_words: str) -> None:
    """Exactly the live API's answer: 429, Google's error body with no details, no Retry-After."""
    assert response.status_code == 429, response.text
    assert "retry-after" not in response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
    assert (body["error"]["code"], body["error"]["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert body["error"]["message"].startswith("Resource has been exhausted (e.g. check quota).")
    assert quota_words in body["error"]["message"]


def listed(api: httpx.Client) -> list[str]:
    return [
        op["name"]
        for op in api.get("/v1beta/batches", params={"pageSize": 1000}).json().get("operations", [])
    ]


def set_quotas(emulator, quotas: dict) -> dict:
    response = emulator.admin("PUT", "quotas", json=quotas)
    assert response.status_code == 200, response.text
    return response.json()


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"enqueued_token": 5}, "unknown quota keys ['enqueued_token']"),
        ({"concurrent_batches": -1}, "concurrent_batches must be an integer >= 0 or null"),
        ({"file_bytes": 1.5}, "file_bytes must be an integer"),
        ({"file_storage_bytes": "20GB"}, "file_storage_bytes must be an integer"),
        (
            {"enqueued_tokens": {"gemini-embedding-001": True}},
            "enqueued_tokens['gemini-embedding-001'] must be",
        ),
        ({"enqueued_tokens": {"": 5}}, "enqueued_tokens keys must be model names"),
        ("[1]", "quotas are a JSON object"),
        ("{nope", "quotas are not valid JSON"),
    ],
)
def test_bad_quota_configurations_are_refused_with_the_reason(raw, message):
    ledger = Ledger({"concurrent_batches": 3})
    with pytest.raises(QuotaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ledger.replace(raw)
    assert ledger.limits() == {"concurrent_batches": 3}  # the old limits stay


def test_configuration_is_normalised():
    assert parse_quotas(None) == {} and parse_quotas("  ") == {}
    assert parse_quotas({"enqueued_tokens": {"gemini-embedding-001": 10, "*": 5}, "file_bytes": None}) == {
        "enqueued_tokens": {"models/gemini-embedding-001": 10, "*": 5}
    }


def test_quotas_over_http_get_put_and_a_clear_400(api, emulator):
    assert emulator.admin("GET", "quotas").json() == {}
    limits = {"enqueued_tokens": 500000, "concurrent_batches": 100, "file_storage_bytes": 20 * 10**9}
    assert set_quotas(emulator, limits) == limits
    bad = emulator.admin("PUT", "quotas", json={"concurrent_batches": "many"})
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "concurrent_batches must be an integer >= 0 or null, got 'many'" in bad.json()["error"]["message"]
    assert emulator.admin("GET", "quotas").json() == limits  # PUT replaces; a bad PUT changes nothing
    assert set_quotas(emulator, {"file_bytes": 10}) == {"file_bytes": 10}
    emulator.admin("POST", "reset").raise_for_status()
    assert emulator.admin("GET", "quotas").json() == {}  # back to the start configuration


def test_a_bad_quota_variable_stops_the_command_with_the_reason():
    done = subprocess.run(
        [sys.executable, "-m", "infra.local.gemini_emulator", "--port", "1"],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "GEMINI_EMULATOR_QUOTAS": '{"file_bytes": -2}',
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "file_bytes must be an integer >= 0 or null, got -2" in done.stderr


# -- enqueued tokens -----------------------------------------------------------------------------------
def test_enqueued_tokens_refuse_a_create_until_a_batch_ends(api, emulator):
    first_texts = ["Embeddings, tokenised!", "hello world"]  # 8 + 2 word pieces
    second_texts = ["a second batch of text"]
    first_tokens, second_tokens = wordpieces(first_texts), wordpieces(second_texts)
    assert first_tokens == 10
    emulator.set_faults({"hold_queue": True})
    set_quotas(emulator, {"enqueued_tokens": first_tokens + second_tokens - 1})

    first = create(api, inline_body(first_texts))["name"]
    stats = emulator.stats()
    assert stats["enqueuedTokens"] == {"total": first_tokens, "byModel": {FULL_MODEL: first_tokens}}
    refused = api.post(CREATE, json=inline_body(second_texts))
    assert_quota_429(refused, "Enqueued tokens")
    assert listed(api) == [first]  # nothing was made
    stats = emulator.stats()
    assert stats["quotaRejections"] == {"total": 1, "enqueued_tokens": 1}
    assert stats["enqueuedTokens"]["total"] == first_tokens and stats["activeBatches"] == 1

    emulator.set_faults({})
    wait_state(api, first)
    assert emulator.stats()["enqueuedTokens"] == {"total": 0, "byModel": {}}
    second = create(api, inline_body(second_texts))["name"]
    assert wait_state(api, second)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert emulator.stats()["peakEnqueuedTokens"]["byModel"][FULL_MODEL] == first_tokens


def test_titles_count_and_limits_can_be_per_model(api, emulator):
    emulator.set_faults({"hold_queue": True})
    set_quotas(emulator, {"enqueued_tokens": {"some-other-model": 1, "*": 1000}})
    request = {
        "content": {"parts": [{"text": "hello world"}, {"text": "Embeddings, tokenised!"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "title": "a title",
        "outputDimensionality": 128,
    }
    body = {"batch": {"displayName": "t", "inputConfig": {"requests": {"requests": [{"request": request}]}}}}
    create(api, body)
    assert emulator.stats()["enqueuedTokens"]["total"] == 2 + 8 + 2  # both parts and the title
    set_quotas(emulator, {"enqueued_tokens": {MODEL: 12}})
    assert_quota_429(api.post(CREATE, json=inline_body(["x"])), FULL_MODEL)


def test_a_file_batch_enqueues_the_tokens_of_every_line(api, emulator):
    texts = [f"line number {i} of the input" for i in range(40)]
    lines = [
        json.dumps({"key": str(i), "request": {"content": {"parts": [{"text": t}]}}})
        for i, t in enumerate(texts)
    ]
    file = upload(api, ("\n".join([*lines, "not json", ""]) + "\n").encode())
    emulator.set_faults({"hold_queue": True})
    body = {"batch": {"displayName": "f", "inputConfig": {"fileName": file["name"]}}}
    set_quotas(emulator, {"enqueued_tokens": wordpieces(texts) - 1})
    assert_quota_429(api.post(CREATE, json=body), "Enqueued tokens")  # counted only until past the limit
    set_quotas(emulator, {"enqueued_tokens": 2 * wordpieces(texts) - 1})
    create(api, body)
    assert emulator.stats()["enqueuedTokens"]["total"] == wordpieces(texts)  # counted exactly at create
    assert_quota_429(api.post(CREATE, json=body), "Enqueued tokens")


def test_without_a_limit_a_file_batch_is_counted_after_its_create(api, emulator):
    lines = [json.dumps({"key": "a", "request": {"content": {"parts": [{"text": "hello world"}]}}})] * 3
    file = upload(api, ("\n".join(lines) + "\n").encode())
    emulator.set_faults({"hold_queue": True})
    create(api, {"batch": {"displayName": "f", "inputConfig": {"fileName": file["name"]}}})
    wait_for(lambda: emulator.stats()["enqueuedTokens"]["total"] == 6, 10, "the background count")
    assert emulator.stats()["peakEnqueuedTokens"]["byModel"] == {FULL_MODEL: 6}


# -- concurrent batches --------------------------------------------------------------------------------
def test_concurrent_batches_count_pending_and_running_only(api, emulator):
    emulator.set_faults({"hold_queue": True})
    set_quotas(emulator, {"concurrent_batches": 2})
    a, b = (create(api, inline_body([t]))["name"] for t in ("a", "b"))
    assert_quota_429(api.post(CREATE, json=inline_body(["c"])), "at most 2 may be")
    api.post(f"/v1beta/{a}:cancel").raise_for_status()  # a PENDING batch ends CANCELLED: its place is free
    c = create(api, inline_body(["c"]))["name"]
    assert_quota_429(api.post(CREATE, json=inline_body(["d"])), "PENDING or RUNNING")
    api.delete(f"/v1beta/{b}").raise_for_status()  # a deleted batch frees its place too
    d = create(api, inline_body(["d"]))["name"]
    assert set(listed(api)) == {a, c, d}
    assert emulator.stats()["activeBatches"] == 2


def test_concurrent_creates_never_overshoot_a_limit(api, emulator):
    emulator.set_faults({"hold_queue": True})
    set_quotas(emulator, {"concurrent_batches": 5})
    statuses: list[int] = []
    lock = threading.Lock()
    gate = threading.Barrier(20)

    def create_one(i: int) -> None:
        with httpx.Client(
            base_url=emulator.base_url, headers={"x-goog-api-key": API_KEY}, trust_env=False
        ) as c:
            gate.wait(timeout=30)
            status = c.post(CREATE, json=inline_body([f"text {i}"]), timeout=60).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=create_one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200] * 5 + [429] * 15
    assert len(listed(api)) == 5
    stats = emulator.stats()
    assert (stats["activeBatches"], stats["peakActiveBatches"]) == (5, 5)
    assert stats["quotaRejections"]["concurrent_batches"] == 15


# -- files -----------------------------------------------------------------------------------------------
def start_upload(api: httpx.Client, size: int) -> httpx.Response:
    return api.post(
        "/upload/v1beta/files",
        json={"file": {"displayName": "x"}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
        },
    )


def raw_upload(api: httpx.Client, data: bytes) -> httpx.Response:
    return api.post(
        "/upload/v1beta/files",
        content=data,
        headers={"X-Goog-Upload-Protocol": "raw", "Content-Type": "application/jsonl"},
    )


def file_names(api: httpx.Client) -> list[str]:
    return [f["name"] for f in api.get("/v1beta/files").json().get("files", [])]


def test_the_largest_file_is_refused_at_start_or_as_its_bytes_arrive(api, emulator):
    set_quotas(emulator, {"file_bytes": 100})
    assert_quota_429(start_upload(api, 101), "at most 100 are allowed")
    refused = raw_upload(api, b"x" * 150)  # no declared size: refused once the bytes pass the limit
    assert_quota_429(refused, "at most 100 are allowed")
    assert file_names(api) == []
    assert upload(api, b"y" * 100)["sizeBytes"] == "100"
    stats = emulator.stats()
    assert stats["fileStorageBytes"] == 100 and stats["quotaRejections"]["file_bytes"] == 2


def test_storage_counts_uploads_and_responses_files_and_delete_frees_it(api, emulator):
    set_quotas(emulator, {"file_storage_bytes": 250})
    first = upload(api, b"a" * 100)
    upload(api, b"b" * 100)
    assert_quota_429(start_upload(api, 100), "Files API storage: 200 bytes stored + 100 > 250")
    assert_quota_429(raw_upload(api, b"c" * 60), "Files API storage")  # refused chunk by chunk, freed
    assert emulator.stats()["fileStorageBytes"] == 200
    assert api.delete(f"/v1beta/{first['name']}").json() == {}  # the live API's empty answer
    assert emulator.stats()["fileStorageBytes"] == 100
    assert upload(api, b"d" * 100)["sizeBytes"] == "100"
    assert len(file_names(api)) == 2

    set_quotas(emulator, {})
    line = json.dumps(
        {"key": "k", "request": {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 128}}
    )
    source = upload(api, (line + "\n").encode())
    op = wait_state(
        api, create(api, {"batch": {"displayName": "f", "inputConfig": {"fileName": source["name"]}}})["name"]
    )
    responses = api.get(f"/v1beta/{op['metadata']['output']['responsesFile']}").json()
    before = emulator.stats()["fileStorageBytes"]
    assert before == 200 + int(source["sizeBytes"]) + int(
        responses["sizeBytes"]
    )  # the service's own file counts
    assert api.delete(f"/v1beta/{responses['name']}").json() == {}
    assert emulator.stats()["fileStorageBytes"] == before - int(responses["sizeBytes"])
    assert api.delete(f"/v1beta/{responses['name']}").status_code == 403  # gone, as a missing file is


def test_peaks_stay_until_reset(api, emulator):
    emulator.set_faults({"hold_queue": True})
    names = [create(api, inline_body([f"t{i}"]))["name"] for i in range(3)]
    upload(api, b"z" * 50)
    emulator.set_faults({})
    for name in names:
        wait_state(api, name)
    stats = emulator.stats()
    assert (stats["activeBatches"], stats["peakActiveBatches"]) == (0, 3)
    assert stats["peakEnqueuedTokens"]["total"] >= stats["enqueuedTokens"]["total"] == 0
    assert emulator.admin("POST", "stats:resetPeaks").json() == {}
    stats = emulator.stats()
    assert (stats["peakActiveBatches"], stats["peakEnqueuedTokens"]["total"]) == (0, 0)
    assert stats["peakFileStorageBytes"] == stats["fileStorageBytes"] == 50


def test_the_sdk_sees_the_429_and_can_delete_files(api, emulator, tmp_path):
    client = genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url, api_version="v1beta")
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"key": "a", "request": {"content": {"parts": [{"text": "hello world"}]}}}) + "\n"
    )
    uploaded = client.files.upload(file=source, config={"mime_type": "application/jsonl"})
    emulator.set_faults({"hold_queue": True})
    set_quotas(emulator, {"enqueued_tokens": 3})
    client.batches.create_embeddings(
        model=MODEL, src={"file_name": uploaded.name}, config={"display_name": "one"}
    )
    with pytest.raises(errors.ClientError) as refused:
        client.batches.create_embeddings(
            model=MODEL, src={"file_name": uploaded.name}, config={"display_name": "two"}
        )
    assert (refused.value.code, refused.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert len(listed(api)) == 1

    set_quotas(emulator, {"file_bytes": 10})
    with pytest.raises(errors.ClientError) as too_big:
        client.files.upload(file=source, config={"mime_type": "application/jsonl"})
    assert too_big.value.code == 429
    stored = emulator.stats()["fileStorageBytes"]
    client.files.delete(name=uploaded.name)
    assert emulator.stats()["fileStorageBytes"] == stored - source.stat().st_size
    wait_for(lambda: uploaded.name not in file_names(api), 5, "the file to be gone")
