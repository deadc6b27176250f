"""The message publisher over Pub/Sub. `publish` returns only once the broker has the message."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from shared.errors import TransientError
from shared.ports import MessagePublisher

__all__ = ["PubSubPublisher"]

PUBLISH_TIMEOUT_SECONDS = 60.0


class PubSubPublisher(MessagePublisher):
    def __init__(self, client: pubsub_v1.PublisherClient, project: str):
        self._client = client
        self._project = project

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        path = topic if topic.startswith("projects/") else self._client.topic_path(self._project, topic)
        try:
            return self._client.publish(path, data, **attributes).result(timeout=PUBLISH_TIMEOUT_SECONDS)
        except (gexc.GoogleAPICallError, TimeoutError) as exc:
            raise TransientError(f"Pub/Sub publish to {topic} failed: {type(exc).__name__}") from exc
