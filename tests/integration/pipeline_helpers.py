"""What integration tests do as a user would: upload with google-cloud-storage, subscribe to the events
topic with google-cloud-pubsub, read outputs back. Waiting is always for a condition, with a deadline."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage

from shared.domain.paths import parse_gs_uri


class EventSubscription:
    """A fresh subscription on a topic; `wait_for` pulls until a matching message arrives."""

    def __init__(self, project: str, topic: str):
        self.client = pubsub_v1.SubscriberClient()
        self.path = self.client.subscription_path(project, f"test-{uuid.uuid4().hex[:12]}")
        self.client.create_subscription(name=self.path, topic=f"projects/{project}/topics/{topic}")
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []

    def pull(self, timeout: float = 2.0) -> list[tuple[dict[str, str], dict[str, Any]]]:
        try:
            response = self.client.pull(subscription=self.path, max_messages=100, timeout=timeout)
        except gexc.DeadlineExceeded:
            return []
        if response.received_messages:
            self.client.acknowledge(subscription=self.path, ack_ids=[m.ack_id for m in response.received_messages])
        batch = [(dict(m.message.attributes), json.loads(m.message.data)) for m in response.received_messages]
        self.received.extend(batch)
        return batch

    def wait_for(self, match: Callable[[dict[str, str], dict[str, Any]], bool], timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for attributes, data in self.received:
            if match(attributes, data):
                return data
        while time.monotonic() < deadline:
            for attributes, data in self.pull():
                if match(attributes, data):
                    return data
        raise TimeoutError(f"no matching message within {timeout:.0f}s; received: {self.received}")

    def event_for(self, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        return self.wait_for(lambda attrs, _: attrs.get("job_id") == job_id, timeout)

    def drain(self, seconds: float) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """Everything that arrives within `seconds` (to prove that nothing more comes)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pull(timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
        return self.received

    def close(self) -> None:
        try:
            self.client.delete_subscription(subscription=self.path)
        finally:
            self.client.close()


def upload(env: dict[str, str], name: str, data: bytes, metadata: dict[str, str] | None = None,
           content_type: str = "application/jsonl") -> storage.Blob:
    client = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"])
    blob = client.bucket(env["INPUT_BUCKET"]).blob(env["INPUT_PREFIX"] + name)
    blob.metadata = metadata
    blob.upload_from_string(data, content_type=content_type)
    return blob


def read_gs(uri: str) -> bytes:
    bucket, name = parse_gs_uri(uri)
    return storage.Client().bucket(bucket).blob(name).download_as_bytes()


def read_vectors(event: dict[str, Any]) -> dict[str, np.ndarray]:
    """id -> vector, from every embeddings file the completion event names."""
    vectors: dict[str, np.ndarray] = {}
    for uri in event["output"]["embeddings"]:
        for line in read_gs(uri).splitlines():
            row = json.loads(line)
            assert row["id"] not in vectors, f"id {row['id']} written twice"
            vectors[row["id"]] = np.asarray(row["embedding"], dtype=np.float32)
    return vectors


def jsonl_records(texts: list[str], prefix: str = "doc") -> bytes:
    return b"".join(json.dumps({"id": f"{prefix}-{i}", "text": t}).encode() + b"\n" for i, t in enumerate(texts))
