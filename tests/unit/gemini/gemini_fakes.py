"""An in-memory Gemini API behind `httpx.MockTransport`, a fake clock, and a client factory.

`FakeGemini` keeps batches, files and upload sessions the way the REST API shapes them (Operations with
camelCase metadata, int64 counts as strings), so the tests exercise the client's parsing, not a mock's
convenience. Faults are plain functions consulted before routing.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.gemini import GeminiClient

#: Distinctive, so any leak is found by a plain substring search.
API_KEY = "AIzaSy-FAKE-KEY-d0-n0t-l3ak-5e6f7a8b"
BASE_URL = "https://gemini.test"
DIMENSIONS = 4

Fault = Callable[[httpx.Request], httpx.Response | None]


def vector_for(text: str) -> list[float]:
    return [float(len(text)), 1.0, 0.5, -0.25]


def error_response(
    code: int, status: str, message: str, headers: dict[str, str] | None = None, details: list | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message, "status": status}}
    if details is not None:
        body["error"]["details"] = details
    return httpx.Response(code, json=body, headers=headers or {})


class FakeClock:
    """`clock` and `sleep` for the client: sleeping advances time and is recorded, never waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class CountingStream(httpx.SyncByteStream):
    """A response body served piece by piece, counting how much the client has pulled."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces
        self.served = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            self.served += 1
            yield piece


class FakeGemini:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.faults: list[Fault] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, list[dict[str, Any]]] = {}  # batch name -> its {"key","request"} items
        self.files: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.streams: list[CountingStream] = []
        self.download_piece_size = 64
        self.created_at = datetime(2025, 11, 25, 12, 0, tzinfo=UTC)
        self.list_order = "newest"  # the live order is undocumented: "oldest" and "random" are allowed too
        self._ids = 0

    # -- plumbing -----------------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for fault in list(self.faults):
            response = fault(request)
            if response is not None:
                return response
        return self._route(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:04d}"

    def requests_to(self, fragment: str) -> list[httpx.Request]:
        return [r for r in self.requests if fragment in r.url.path]

    # -- routing ------------------------------------------------------------------------------------

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        method = request.method
        if m := re.fullmatch(r"/v1beta/(models/[^:]+):asyncBatchEmbedContent", path):
            return self._create(m.group(1), json.loads(request.content))
        if path == "/v1beta/batches" and method == "GET":
            return self._list(request)
        if m := re.fullmatch(r"/v1beta/(batches/[^:]+):cancel", path):
            return self._cancel(m.group(1))
        if m := re.fullmatch(r"/v1beta/(batches/[^:/]+)", path):
            name = m.group(1)
            if name not in self.batches:
                return error_response(404, "NOT_FOUND", f"Batch {name} not found")
            if method == "DELETE":
                del self.batches[name]
                return httpx.Response(200, json={})
            return httpx.Response(200, json=self.batches[name])
        if path == "/upload/v1beta/files" and method == "POST":
            return self._upload_start(request)
        if m := re.fullmatch(r"/upload-session/([^/]+)", path):
            return self._upload_chunk(m.group(1), request)
        if m := re.fullmatch(r"/download/v1beta/(files/[^:]+):download", path):
            return self._download(m.group(1), request)
        if m := re.fullmatch(r"/v1beta/(files/[^:/]+)", path):
            name = m.group(1)
            if name not in self.files:
                return error_response(404, "NOT_FOUND", f"File {name} not found")
            if method == "DELETE":
                del self.files[name]
                return httpx.Response(200, json={})
            return httpx.Response(200, json=self.files[name]["resource"])
        if re.fullmatch(r"/v1beta/models/[^:]+:embedContent", path):
            body = json.loads(request.content)
            return httpx.Response(
                200, json={"embedding": {"values": vector_for(body["content"]["parts"][0]["text"])}}
            )
        if re.fullmatch(r"/v1beta/models/[^:]+:batchEmbedContents", path):
            body = json.loads(request.content)
            if len(body["requests"]) > 100:
                return error_response(400, "INVALID_ARGUMENT", "at most 100 requests can be in one batch")
            embeddings = [{"values": vector_for(r["content"]["parts"][0]["text"])} for r in body["requests"]]
            return httpx.Response(200, json={"embeddings": embeddings})
        return error_response(404, "NOT_FOUND", f"no route for {method} {path}")

    # -- batches --------------------------------------------------------------------------------------

    def _create(self, model: str, body: dict[str, Any]) -> httpx.Response:
        batch = body["batch"]
        config = batch["inputConfig"]
        if "fileName" in config:
            lines = self.files[config["fileName"]]["content"].decode().splitlines()
            items = [json.loads(line) for line in lines if line.strip()]
        else:
            items = [
                {"key": r["metadata"]["key"], "request": r["request"]} for r in config["requests"]["requests"]
            ]
        name = self._next_id("batches/b")
        self.created_at += timedelta(minutes=1)
        stamp = self.created_at.isoformat().replace("+00:00", "Z")
        self.inputs[name] = items
        self.batches[name] = {
            "name": name,
            "metadata": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatch",
                "model": model,
                "displayName": batch["displayName"],
                "inputConfig": {"fileName": config["fileName"]} if "fileName" in config else {},
                "state": "BATCH_STATE_PENDING",
                "createTime": stamp,
                "updateTime": stamp,
                "priority": batch.get("priority", "0"),
                "batchStats": {"requestCount": str(len(items)), "pendingRequestCount": str(len(items))},
            },
            "done": False,
        }
        return httpx.Response(200, json=self.batches[name])

    def _list(self, request: httpx.Request) -> httpx.Response:
        size = int(request.url.params.get("pageSize", "50"))
        start = int(request.url.params.get("pageToken") or 0)
        newest_first = sorted(
            self.batches.values(), key=lambda op: op["metadata"].get("createTime", ""), reverse=True
        )
        if self.list_order == "oldest":
            newest_first.reverse()
        elif self.list_order == "random":
            random.Random(len(newest_first)).shuffle(newest_first)
        page = newest_first[start : start + size]
        body: dict[str, Any] = {"operations": page}
        if start + size < len(newest_first):
            body["nextPageToken"] = str(start + size)
        return httpx.Response(200, json=body)

    def _cancel(self, name: str) -> httpx.Response:
        if name not in self.batches:
            return error_response(404, "NOT_FOUND", f"Batch {name} not found")
        metadata = self.batches[name]["metadata"]
        if metadata["state"] in (
            "BATCH_STATE_SUCCEEDED",
            "BATCH_STATE_FAILED",
            "BATCH_STATE_CANCELLED",
            "BATCH_STATE_EXPIRED",
        ):
            return error_response(400, "FAILED_PRECONDITION", "Batch is already in a terminal state")
        self.set_state(name, "BATCH_STATE_CANCELLED")
        return httpx.Response(200, json={})

    def set_state(self, name: str, state: str, **stats: int) -> None:
        operation = self.batches[name]
        operation["metadata"]["state"] = state
        if stats:
            operation["metadata"]["batchStats"] = {_camel(k): str(v) for k, v in stats.items()}
        operation["done"] = state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")

    def complete(self, name: str, *, failures: dict[str, str] | None = None, where: str = "metadata") -> None:
        """Finish the batch: results in reverse input order (the API does not keep the order), failed
        keys with an error instead. Inline batches answer inline, file batches with a responses file;
        `where` puts the output in `metadata.output` or in the operation's `response`."""
        failures = failures or {}
        items = self.inputs[name]
        results = []
        for item in reversed(items):
            key = item["key"]
            if key in failures:
                results.append(
                    {"key": key, "error": {"code": 3, "message": failures[key], "status": "INVALID_ARGUMENT"}}
                )
            else:
                text = item["request"]["content"]["parts"][0]["text"]
                results.append({"key": key, "response": {"embedding": {"values": vector_for(text)}}})
        operation = self.batches[name]
        if operation["metadata"]["inputConfig"].get("fileName"):
            content = "".join(json.dumps(r) + "\n" for r in results).encode()
            output: dict[str, Any] = {"responsesFile": self.add_file(content, display_name="responses")}
        else:
            inline = [{"metadata": {"key": r.pop("key")}, **r} for r in results]
            output = {"inlinedResponses": {"inlinedResponses": inline}}
        self.set_state(
            name,
            "BATCH_STATE_SUCCEEDED",
            request_count=len(items),
            successful_request_count=len(items) - len(failures),
            failed_request_count=len(failures),
        )
        if where == "metadata":
            operation["metadata"]["output"] = output
        else:
            operation["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatchOutput",
                **output,
            }

    # -- files ----------------------------------------------------------------------------------------

    def add_file(
        self, content: bytes, *, display_name: str = "", mime_type: str = "application/jsonl"
    ) -> str:
        name = self._next_id("files/f")
        self.files[name] = {
            "content": content,
            "resource": {
                "name": name,
                "displayName": display_name,
                "mimeType": mime_type,
                "sizeBytes": str(len(content)),
                "state": "ACTIVE",
                "uri": f"{BASE_URL}/v1beta/{name}",
                "createTime": "2025-11-25T12:00:00.123456789Z",
                "expirationTime": "2025-11-27T12:00:00Z",
            },
        }
        return name

    def _upload_start(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["x-goog-upload-protocol"] == "resumable"
        assert request.headers["x-goog-upload-command"] == "start"
        session = self._next_id("s")
        self.sessions[session] = {
            "size": int(request.headers["x-goog-upload-header-content-length"]),
            "mime_type": request.headers["x-goog-upload-header-content-type"],
            "display_name": json.loads(request.content)["file"]["displayName"],
            "data": bytearray(),
            "final": False,
        }
        # Another host on purpose: the client must send chunks to its own base URL.
        url = f"https://elsewhere.test/upload-session/{session}?upload_id={session}&upload_protocol=resumable"
        return httpx.Response(
            200, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}, json={}
        )

    def _upload_chunk(self, session_id: str, request: httpx.Request) -> httpx.Response:
        session = self.sessions[session_id]
        command = request.headers["x-goog-upload-command"]
        offset = int(request.headers["x-goog-upload-offset"])
        if session["final"] or offset != len(session["data"]):
            return error_response(400, "INVALID_ARGUMENT", "bad offset")
        session["data"] += request.content
        if "finalize" not in command:
            return httpx.Response(200, headers={"X-Goog-Upload-Status": "active"})
        session["final"] = True
        if len(session["data"]) != session["size"]:
            return error_response(400, "INVALID_ARGUMENT", "size mismatch")
        name = self.add_file(
            bytes(session["data"]), display_name=session["display_name"], mime_type=session["mime_type"]
        )
        return httpx.Response(
            200, headers={"X-Goog-Upload-Status": "final"}, json={"file": self.files[name]["resource"]}
        )

    def _download(self, name: str, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("alt") != "media":
            return error_response(400, "INVALID_ARGUMENT", "alt=media required")
        if name not in self.files:
            return error_response(404, "NOT_FOUND", f"File {name} not found")
        content = self.files[name]["content"]
        size = self.download_piece_size
        stream = CountingStream([content[i : i + size] for i in range(0, len(content), size)])
        self.streams.append(stream)
        return httpx.Response(200, stream=stream, headers={"Content-Type": "application/octet-stream"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def make_client(
    handler: Callable[[httpx.Request], httpx.Response], clock: FakeClock, **options: Any
) -> GeminiClient:
    """A client over `handler` (the fake API's, or a one-off for error paths), on the fake clock, jitter fixed."""
    options.setdefault("rand", lambda: 0.5)
    return GeminiClient(
        API_KEY,
        base_url=BASE_URL,
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
        **options,
    )
