"""`events`: completion events as they are published, through a subscription of our own.

The subscription is created for the command and deleted when it ends, however it ends (count reached,
timeout, Ctrl-C, an error). Should the process be killed outright, Pub/Sub deletes it by itself after a day
without use (its expiration policy). Only events published after it exists are received.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["TemporarySubscription", "listen"]

EXPIRE_AFTER_SECONDS = 24 * 3600  # Pub/Sub's minimum expiration TTL
PULL_SECONDS = 2.0  # a pull's longest wait: keeps Ctrl-C and --timeout responsive


class TemporarySubscription:
    """A pull subscription on `topic` that exists inside the `with` block."""

    def __init__(self, subscriber: Any, project: str, topic: str, prefix: str = "embedpipe-events"):
        self.subscriber = subscriber
        self.topic = f"projects/{project}/topics/{topic}"
        self.path = f"projects/{project}/subscriptions/{prefix}-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> TemporarySubscription:
        from google.api_core import exceptions as gexc

        from embedpipe.errors import CliError

        try:
            self.subscriber.create_subscription(request={
                "name": self.path, "topic": self.topic, "ack_deadline_seconds": 30,
                "expiration_policy": {"ttl": {"seconds": EXPIRE_AFTER_SECONDS}},
            })
        except gexc.NotFound:
            raise CliError(f"no topic {self.topic}: check EVENTS_TOPIC and GOOGLE_CLOUD_PROJECT") from None
        return self

    def __exit__(self, *exc: object) -> None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.NotFound):
            self.subscriber.delete_subscription(request={"subscription": self.path}, timeout=30)

    def pull(self, wait: float) -> list[tuple[dict[str, str], bytes]]:
        """What arrived within `wait` seconds (acknowledged): (attributes, data) per message."""
        from google.api_core import exceptions as gexc

        try:
            response = self.subscriber.pull(request={"subscription": self.path, "max_messages": 50}, timeout=wait)
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []
        messages = list(response.received_messages)
        if messages:
            self.subscriber.acknowledge(request={"subscription": self.path, "ack_ids": [m.ack_id for m in messages]})
        return [(dict(m.message.attributes), bytes(m.message.data)) for m in messages]


def listen(
    pull: Callable[[float], list[tuple[dict[str, str], bytes]]],
    on_event: Callable[[dict[str, Any]], None],
    *,
    count: int | None = None,
    timeout: float | None = None,
    job_id: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Hand each event (of `job_id`, when given) to `on_event` until `count` have come or `timeout` has
    passed; return how many came. Messages that are not JSON objects are skipped."""
    received = 0
    deadline = None if timeout is None else clock() + timeout
    while count is None or received < count:
        remaining = PULL_SECONDS if deadline is None else deadline - clock()
        if remaining <= 0:
            break
        for attributes, data in pull(min(PULL_SECONDS, remaining)):
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if job_id and attributes.get("job_id", event.get("job_id")) != job_id:
                continue
            on_event(event)
            received += 1
            if count is not None and received >= count:
                break
    return received
