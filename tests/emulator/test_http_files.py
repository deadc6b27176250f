"""The Files API over HTTP: resumable uploads, file resources, downloads, file batches, bounded memory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.emulator.emulator_helpers import MODEL, create, upload, wait_state

START_HEADERS = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"}


def jsonl(texts: list[str], dims: int = 128) -> bytes:
    lines = [
        json.dumps(
            {
                "key": f"item-{i}",
                "request": {"content": {"parts": [{"text": t}]}, "output_dimensionality": dims},
            }
        )
        for i, t in enumerate(texts)
    ]
    return ("\n".join(lines) + "\n").encode()


def start(api: httpx.Client, size: int, **headers: str) -> str:
    response = api.post(
        "/upload/v1beta/files",
        json={"file": {"displayName": "x"}},
        headers={**START_HEADERS, "X-Goog-Upload-Header-Content-Length": str(size), **headers},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-goog-upload-status"] == "active"
    return response.headers["x-goog-upload-url"]


def test_a_chunked_resumable_upload_makes_a_file(api):
    data = jsonl([f"text {i}" for i in range(50)])
    file = upload(api, data, chunk=1000)
    assert file["name"].startswith("files/") and file["displayName"] == "input"
    assert (file["mimeType"], file["sizeBytes"], file["state"], file["source"]) == (
        "application/jsonl",
        str(len(data)),
        "ACTIVE",
        "UPLOADED",
    )
    assert base64.b64decode(file["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
    assert file["uri"].endswith(f"/v1beta/{file['name']}") and "downloadUri" not in file
    assert api.get(f"/v1beta/{file['name']}").json() == file
    listed = api.get("/v1beta/files").json()["files"]
    assert [f["name"] for f in listed] == [file["name"]]


def test_the_session_url_needs_no_key_and_can_be_queried(api):
    url = start(api, 10)
    assert "key=" not in url
    with httpx.Client(trust_env=False) as bare:
        first = bare.post(
            url, content=b"12345", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}
        )
        assert (
            first.headers["x-goog-upload-status"] == "active"
            and first.headers["x-goog-upload-size-received"] == "5"
        )
        query = bare.post(url, headers={"X-Goog-Upload-Command": "query"})
        assert query.headers["x-goog-upload-size-received"] == "5"
        wrong = bare.post(
            url, content=b"67890", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "3"}
        )
        assert wrong.status_code == 400 and wrong.headers["x-goog-upload-status"] == "active"
        final = bare.post(
            url,
            content=b"67890",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "5"},
        )
        assert final.headers["x-goog-upload-status"] == "final" and final.json()["file"]["sizeBytes"] == "10"
        again = bare.post(
            url, content=b"x", headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "10"}
        )
        assert again.status_code == 404 and again.headers["x-goog-upload-status"] == "final"


def test_upload_size_rules(api):
    too_big = api.post(
        "/upload/v1beta/files",
        headers={**START_HEADERS, "X-Goog-Upload-Header-Content-Length": str(3 * 1024**3)},
    )
    assert too_big.status_code == 400 and "2 GB" in too_big.json()["error"]["message"]
    with httpx.Client(trust_env=False) as bare:
        url = start(api, 4)
        over = bare.post(
            url,
            content=b"12345",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
        )
        assert over.status_code == 400 and over.headers["x-goog-upload-status"] == "final"
        url = start(api, 4)
        short = bare.post(
            url,
            content=b"12",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
        )
        assert short.status_code == 400 and "declared" in short.json()["error"]["message"]
    assert api.get("/v1beta/files").json() == {}
    no_protocol = api.post("/upload/v1beta/files", content=b"x")
    assert no_protocol.status_code == 400 and "resumable" in no_protocol.json()["error"]["message"]


def test_a_raw_upload_and_a_named_file(api):
    raw = api.post(
        "/upload/v1beta/files",
        content=b'{"a": 1}\n',
        headers={"X-Goog-Upload-Protocol": "raw", "Content-Type": "application/jsonl"},
    )
    assert raw.status_code == 200 and raw.json()["file"]["sizeBytes"] == "9"
    named = api.post(
        "/upload/v1beta/files",
        json={"file": {"name": "files/my-input-1"}},
        headers={**START_HEADERS, "X-Goog-Upload-Header-Content-Length": "1"},
    )
    assert named.status_code == 200
    dup = api.post(
        "/upload/v1beta/files",
        json={"file": {"name": "my-input-1"}},
        headers={**START_HEADERS, "X-Goog-Upload-Header-Content-Length": "1"},
    )
    assert dup.status_code == 409 and dup.json()["error"]["status"] == "ALREADY_EXISTS"
    bad = api.post("/upload/v1beta/files", json={"file": {"name": "Bad_Name"}}, headers=START_HEADERS)
    assert bad.status_code == 400


def test_missing_files_are_403_as_on_the_live_api_and_delete_works(api):
    missing = api.get("/v1beta/files/nosuchfile")
    assert missing.status_code == 403 and "or it may not exist" in missing.json()["error"]["message"]
    file = upload(api, b"{}\n")
    assert api.delete(f"/v1beta/{file['name']}").json() == {}
    assert api.get(f"/v1beta/{file['name']}").status_code == 403


def test_a_file_batch_writes_a_downloadable_responses_file(api):
    texts = [f"document {i} talks about {'rivers' if i % 3 else 'markets'}" for i in range(40)] + [""]
    source = upload(api, jsonl(texts, dims=768), chunk=2048)
    op = create(api, {"batch": {"display_name": "by file", "input_config": {"file_name": source["name"]}}})
    assert op["metadata"]["inputConfig"] == {"fileName": source["name"]}
    op = wait_state(api, op["name"])
    assert op["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert op["metadata"]["batchStats"] == {
        "requestCount": "41",
        "successfulRequestCount": "40",
        "failedRequestCount": "1",
    }
    name = op["metadata"]["output"]["responsesFile"]
    assert op["response"]["responsesFile"] == name and name.startswith("files/")

    record = api.get(f"/v1beta/{name}").json()
    assert record["source"] == "GENERATED" and record["mimeType"] == "application/jsonl"
    assert record["downloadUri"].endswith(f"/download/v1beta/{name}:download?alt=media")
    first = api.get(f"/v1beta/{name}:download", params={"alt": "media"})
    second = api.get(f"/download/v1beta/{name}:download", params={"alt": "media"})
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert str(len(first.content)) == record["sizeBytes"]

    lines = [json.loads(line) for line in first.content.decode().splitlines()]
    assert [line["key"] for line in lines] == [f"item-{i}" for i in range(41)]
    assert lines[-1]["error"]["status"] == "INVALID_ARGUMENT" and "response" not in lines[-1]
    body = {"content": {"parts": [{"text": texts[5]}]}, "outputDimensionality": 768}
    expected = api.post(f"/v1beta/models/{MODEL}:embedContent", json=body).json()["embedding"]["values"]
    np.testing.assert_allclose(lines[5]["response"]["embedding"]["values"], expected, atol=1e-7)


def test_only_generated_files_download_and_alt_media_is_required(api):
    uploaded = upload(api, b"{}\n")
    refused = api.get(f"/v1beta/{uploaded['name']}:download", params={"alt": "media"})
    assert refused.status_code == 400 and "Only generated files" in refused.json()["error"]["message"]
    assert api.get(f"/v1beta/{uploaded['name']}:download").status_code == 400
    assert api.get("/download/v1beta/files/nosuchfile:download", params={"alt": "media"}).status_code == 403


def test_downloads_honour_injected_5xx_and_count_in_stats(api, emulator):
    source = upload(api, jsonl(["a", "b"]))
    op = wait_state(
        api, create(api, {"batch": {"displayName": "d", "inputConfig": {"fileName": source["name"]}}})["name"]
    )
    name = op["metadata"]["output"]["responsesFile"]
    emulator.set_faults({"http_5xx": {"count": 1, "status": 503, "path_contains": ":download"}})
    assert api.get(f"/download/v1beta/{name}:download", params={"alt": "media"}).status_code == 503
    assert api.get(f"/download/v1beta/{name}:download", params={"alt": "media"}).status_code == 200
    calls = emulator.stats()["calls"]
    assert (calls["uploads"], calls["upload_chunks"], calls["downloads"], calls["creates"]) == (1, 1, 2, 1)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_large_upload_streams_to_disk_with_bounded_memory(api, emulator):
    size, chunk = 96 * 1024 * 1024, 8 * 1024 * 1024  # google-genai uploads in 8 MB chunks
    block = os.urandom(1024 * 1024)
    before = _rss_kib(emulator.process.pid)
    url = start(api, size)
    digest = hashlib.sha256()
    with httpx.Client(trust_env=False, timeout=120) as bare:
        for offset in range(0, size, chunk):

            def body(n: int = chunk):
                for _ in range(n // len(block)):
                    digest.update(block)
                    yield block

            command = "upload, finalize" if offset + chunk >= size else "upload"
            response = bare.post(
                url,
                content=body(),
                headers={
                    "X-Goog-Upload-Command": command,
                    "X-Goog-Upload-Offset": str(offset),
                    "Content-Length": str(chunk),
                },
            )
            assert response.status_code == 200, response.text
    file = response.json()["file"]
    assert file["sizeBytes"] == str(size)
    assert base64.b64decode(file["sha256Hash"]).decode() == digest.hexdigest()
    grown_mib = (_rss_kib(emulator.process.pid) - before) / 1024
    assert grown_mib < 48, f"the emulator grew by {grown_mib:.0f} MiB while receiving 96 MiB"
