"""Helpers of the Gemini API emulator's tests: start a process, drive batches and uploads, a fake encoder.

Waiting is always for a condition with a deadline (`wait_for`), never a fixed sleep.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from infra.local.gemini_emulator.encoder import TextEncoder, locate_tokenizer
from infra.local.processes import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "emulator-test-key"
MODEL = "gemini-embedding-001"


def wait_for(
    condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll until `condition()` returns something truthy and return it; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class RunningEmulator:
    process: ManagedProcess
    base_url: str
    api_key: str

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base_url}/_emulator/{path}", timeout=30, trust_env=False, **kwargs
        )

    def set_faults(self, plan: dict[str, Any]) -> None:
        self.admin("PUT", "faults", json=plan).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "stats").json()


def start_emulator(name: str, env: dict[str, str], wait_model: bool = True) -> RunningEmulator:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "infra.local.gemini_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        log_path=ROOT / ".local" / f"{name}-{os.getpid()}.log",
        health_url=f"{base}/_emulator/health",
        env={"PYTHONPATH": str(ROOT), "GEMINI_EMULATOR_WORKERS": "2", **env},
        cwd=ROOT,
    )
    process.start()
    try:
        process.wait_ready(timeout=30)
        if wait_model:
            wait_for(
                lambda: httpx.get(process.health_url, timeout=5, trust_env=False).json().get("ready"),
                timeout=120,
                what=f"{name} to load its model",
            )
    except BaseException:
        process.stop()
        raise
    return RunningEmulator(process, base, env.get("GEMINI_EMULATOR_API_KEY", "any-key"))


def inline_body(
    texts: Sequence[str], display_name: str = "test", dims: int | None = 128, **batch: Any
) -> dict:
    requests = []
    for i, text in enumerate(texts):
        request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if dims is not None:
            request["outputDimensionality"] = dims
        requests.append({"request": request, "metadata": {"key": str(i)}})
    return {
        "batch": {"displayName": display_name, "inputConfig": {"requests": {"requests": requests}}, **batch}
    }


def create(api: httpx.Client, body: dict, model: str = MODEL) -> dict:
    response = api.post(f"/v1beta/models/{model}:asyncBatchEmbedContent", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(api: httpx.Client, name: str, states: set[str] | None = None, timeout: float = 60.0) -> dict:
    """The batch's Operation once its state is one of `states` (default: any terminal state)."""
    wanted = states or {
        "BATCH_STATE_SUCCEEDED",
        "BATCH_STATE_FAILED",
        "BATCH_STATE_CANCELLED",
        "BATCH_STATE_EXPIRED",
    }

    def current() -> dict | None:
        op = api.get(f"/v1beta/{name}").json()
        return op if op["metadata"]["state"] in wanted else None

    return wait_for(current, timeout, f"{name} to reach {sorted(wanted)}")


def upload(api: httpx.Client, data: bytes, mime: str = "application/jsonl", chunk: int | None = None) -> dict:
    """A resumable upload as google-genai does it: start, then upload chunks, the last with finalize."""
    start = api.post(
        "/upload/v1beta/files",
        json={"file": {"display_name": "input", "mime_type": mime}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": mime,
        },
    )
    assert start.status_code == 200, start.text
    url = start.headers["x-goog-upload-url"]
    chunk = chunk or max(len(data), 1)
    offset = 0
    with httpx.Client(timeout=60, trust_env=False) as bare:  # the session URL is the credential
        while True:
            piece = data[offset : offset + chunk]
            last = offset + len(piece) >= len(data)
            response = bare.post(
                url,
                content=piece,
                headers={
                    "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                    "X-Goog-Upload-Offset": str(offset),
                },
            )
            assert response.status_code == 200, response.text
            offset += len(piece)
            if last:
                assert response.headers["x-goog-upload-status"] == "final"
                return response.json()["file"]
            assert response.headers["x-goog-upload-status"] == "active"


class FakeEncoder(TextEncoder):
    """Deterministic unit vectors from a hash of the text; counts calls. No model, no I/O."""

    name = "fake"

    def __init__(self, dimensions: int = 16) -> None:
        self.dimensions = dimensions
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            row = np.random.default_rng(seed).standard_normal(self.dimensions)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimensions)


def wordpieces(texts: Sequence[str]) -> int:
    """Tokens of `texts` by the emulator's tokenizer (all-MiniLM-L6-v2's WordPiece), read independently of
    the emulator's code: no truncation, no [CLS]/[SEP]."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(locate_tokenizer()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST; answers `fail_with` to the next `failures` ones."""

    server: http.server.ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    failures: int = 0
    fail_with: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/gemini"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.failures, self.fail_with = count, status

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first `count` deliveries answered 2xx, once there are that many."""

        def ok() -> list[Received] | None:
            with self.lock:
                done = [r for r in self.received if r.status < 300]
            return done if len(done) >= count else None

        return wait_for(ok, timeout, f"{count} webhook deliveries")

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: dict[str, Receiver] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            receiver = holder["receiver"]
            with receiver.lock:
                status = 200
                if receiver.failures > 0:
                    receiver.failures -= 1
                    status = receiver.fail_with
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                )
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["receiver"] = receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
    return receiver
