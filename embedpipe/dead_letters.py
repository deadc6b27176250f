"""Dead letters: list the messages held in the dead-letter subscriptions, and replay them.

Pub/Sub forwards a message whose delivery attempts ran out to its subscription's dead-letter topic, with
attributes naming where it came from (`CloudPubSubDeadLetterSourceSubscription` and `...Project`,
`...DeliveryCount`, `...TopicPublishTime`). Every dead-letter topic has a hold subscription
(`<prefix>-<function>-dlq-hold`, infra/terraform/pubsub.tf): that is where these commands read.

Guarantees:
- `peek` consumes nothing: what it pulls it releases at once (ack deadline 0).
- `replay` publishes a message to the topic of the subscription it came from (same data, its own attributes
  without the dead-letter ones, plus `replayed_from`) and acknowledges it on the hold subscription only
  after the publish succeeded. A message whose source cannot be resolved stays held, and is reported.
  At least once: a crash between publish and acknowledge replays it twice; the pipeline is idempotent
  (one job per object generation, completion events carry their event_id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DEAD_LETTER_ATTRIBUTES",
    "HOLD_SUFFIX",
    "DeadLetter",
    "DeadLetterBus",
    "PubSubDeadLetters",
    "ReplayReport",
    "peek",
    "replay",
]

HOLD_SUFFIX = "-dlq-hold"
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_PROJECT = "CloudPubSubDeadLetterSourceSubscriptionProject"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
DEAD_LETTER_ATTRIBUTES = (SOURCE_SUBSCRIPTION, SOURCE_PROJECT, DELIVERY_COUNT,
                          "CloudPubSubDeadLetterSourceTopicPublishTime",
                          "CloudPubSubDeadLetterSourceDeliveryErrorMessage")
PULL_BATCH = 100


@dataclass(frozen=True)
class DeadLetter:
    hold: str  # the hold subscription's path
    ack_id: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    published: str = ""  # when it was dead-lettered

    @property
    def source(self) -> str | None:
        """The path of the subscription it was dead-lettered from, if Pub/Sub said."""
        name = self.attributes.get(SOURCE_SUBSCRIPTION)
        project = self.attributes.get(SOURCE_PROJECT)
        if not name:
            return None
        return name if name.startswith("projects/") else f"projects/{project}/subscriptions/{name}"

    @property
    def deliveries(self) -> str:
        return self.attributes.get(DELIVERY_COUNT, "?")

    def original_attributes(self) -> dict[str, str]:
        return {k: v for k, v in self.attributes.items() if k not in DEAD_LETTER_ATTRIBUTES}


class DeadLetterBus(Protocol):
    """What the commands need of Pub/Sub (`PubSubDeadLetters`; tests use a fake of their own)."""

    def holds(self) -> list[str]: ...
    def pull(self, subscription: str, max_messages: int) -> list[DeadLetter]: ...
    def release(self, subscription: str, ack_ids: list[str]) -> None: ...
    def ack(self, subscription: str, ack_ids: list[str]) -> None: ...
    def topic_of(self, subscription: str) -> str | None: ...
    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str: ...


def _drain(bus: DeadLetterBus, hold: str, limit: int) -> Iterator[DeadLetter]:
    """Up to `limit` messages of `hold`, pulled in batches until it has no more to give."""
    taken = 0
    while taken < limit:
        batch = bus.pull(hold, min(PULL_BATCH, limit - taken))
        if not batch:
            return
        taken += len(batch)
        yield from batch


def peek(bus: DeadLetterBus, holds: Iterable[str], limit: int = 100) -> list[DeadLetter]:
    """The held messages, up to `limit` per subscription, left where they are."""
    found: list[DeadLetter] = []
    for hold in holds:
        pulled = list(_drain(bus, hold, limit))
        if pulled:
            bus.release(hold, [m.ack_id for m in pulled])
        found.extend(pulled)
    return found


@dataclass
class ReplayReport:
    replayed: list[tuple[DeadLetter, str, str]] = field(default_factory=list)  # (message, topic, new id)
    kept: list[tuple[DeadLetter, str]] = field(default_factory=list)  # (message, why it stays held)


def replay(bus: DeadLetterBus, holds: Iterable[str], limit: int = 100, *, to_topic: str | None = None,
           dry_run: bool = False, on_message: Callable[[DeadLetter, str | None], None] | None = None) -> ReplayReport:
    """Publish held messages back where they came from (or to `to_topic`), then acknowledge each one.

    `dry_run` resolves the destinations and releases everything. A message that cannot be resolved or
    published is released (it stays held) and reported in `kept`.
    """
    report = ReplayReport()
    topics: dict[str, str | None] = {}
    for hold in holds:
        release: list[str] = []
        for message in _drain(bus, hold, limit):
            topic = to_topic or _topic_for(bus, message, topics)
            if on_message is not None:
                on_message(message, topic)
            if topic is None:
                report.kept.append((message, "its source subscription is unknown or gone (use --to-topic)"))
                release.append(message.ack_id)
                continue
            if dry_run:
                release.append(message.ack_id)
                report.replayed.append((message, topic, ""))
                continue
            attributes = {**message.original_attributes(), "replayed_from": message.message_id}
            try:
                new_id = bus.publish(topic, message.data, attributes)
            except Exception as exc:  # noqa: BLE001 - the message stays held; the report says why
                report.kept.append((message, f"publishing to {topic} failed: {type(exc).__name__}: {exc}"))
                release.append(message.ack_id)
                continue
            bus.ack(hold, [message.ack_id])
            report.replayed.append((message, topic, new_id))
        if release:
            bus.release(hold, release)
    return report


def _topic_for(bus: DeadLetterBus, message: DeadLetter, known: dict[str, str | None]) -> str | None:
    source = message.source
    if source is None:
        return None
    if source not in known:
        known[source] = bus.topic_of(source)
    return known[source]


class PubSubDeadLetters:
    """`DeadLetterBus` over Google's Pub/Sub clients (the emulator's too)."""

    def __init__(self, subscriber: Any, publisher: Any, project: str, pull_timeout: float = 3.0):
        self.subscriber = subscriber
        self.publisher = publisher
        self.project = project
        self.pull_timeout = pull_timeout

    def path(self, name: str) -> str:
        return name if name.startswith("projects/") else f"projects/{self.project}/subscriptions/{name}"

    def holds(self) -> list[str]:
        """Every subscription of the project whose name ends with -dlq-hold."""
        listed = self.subscriber.list_subscriptions(request={"project": f"projects/{self.project}"})
        return sorted(s.name for s in listed if s.name.endswith(HOLD_SUFFIX))

    def pull(self, subscription: str, max_messages: int) -> list[DeadLetter]:
        from google.api_core import exceptions

        try:
            answer = self.subscriber.pull(request={"subscription": subscription, "max_messages": max_messages},
                                          timeout=self.pull_timeout)
        except exceptions.DeadlineExceeded:
            return []
        return [DeadLetter(hold=subscription, ack_id=r.ack_id, message_id=r.message.message_id,
                           data=bytes(r.message.data), attributes=dict(r.message.attributes),
                           published=_iso(r.message.publish_time))
                for r in answer.received_messages]

    def release(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            self.subscriber.modify_ack_deadline(
                request={"subscription": subscription, "ack_ids": ack_ids, "ack_deadline_seconds": 0})

    def ack(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            self.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})

    def topic_of(self, subscription: str) -> str | None:
        from google.api_core import exceptions

        try:
            topic = self.subscriber.get_subscription(request={"subscription": subscription}).topic
        except exceptions.NotFound:
            return None
        return None if not topic or topic == "_deleted-topic_" else topic

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        return self.publisher.publish(topic, data, **attributes).result(timeout=60)


def _iso(timestamp: Any) -> str:
    try:
        return timestamp.isoformat()
    except AttributeError:
        return str(timestamp or "")
