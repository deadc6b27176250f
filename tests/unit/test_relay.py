"""The relay's CloudEvents are Eventarc's, and its deliveries ack, retry and drop as Eventarc's would.

No network: deliveries go through `httpx.MockTransport`, messages are stand-ins for the Pub/Sub client's.
Expected values follow Eventarc's documented formats (cloud.google.com/eventarc/docs/cloudevents and
cloudevents-json; googleapis/google-cloudevents testdata).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from cloudevents.http import CloudEvent, from_http

from infra.local.processes import wait_until
from infra.local.relay import (
    ConversionError,
    Relay,
    Route,
    backoff_delay,
    example_events,
    pubsub_event,
    rfc3339,
    storage_event,
)

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"
RESOURCE = {
    "kind": "storage#object", "id": "in/incoming/a b.jsonl#1795645176460765", "name": "incoming/a b.jsonl",
    "bucket": "in", "generation": "1795645176460765", "contentType": "application/x-ndjson",
    "timeCreated": "2026-11-25T22:19:36.46074Z", "updated": "2026-11-25T22:19:36.460747Z",
    "storageClass": "STANDARD", "size": "14", "md5Hash": "BDnsV5zLMWwiDRYgdE9EeA==", "crc32c": "/Krp3g==",
    "metadata": {"x": "1"},
}
# What fake-gcs-server publishes for a finalize (captured from the binary the stack runs).
NOTIFICATION = {
    "eventType": "OBJECT_FINALIZE", "objectId": "incoming/a b.jsonl", "payloadFormat": "JSON_API_V1",
    "objectGeneration": "1795645176460765", "bucketId": "in", "eventTime": "2026-11-25T22:19:36Z",
}


# -- conversions ------------------------------------------------------------------------------------------


def test_a_finalize_notification_becomes_eventarcs_storage_event():
    event = storage_event("42", NOTIFICATION, json.dumps(RESOURCE).encode())

    assert event.attributes == {
        "specversion": "1.0",
        "id": "42",
        "source": "//storage.googleapis.com/projects/_/buckets/in",
        "type": "google.cloud.storage.object.v1.finalized",
        "subject": "objects/incoming/a b.jsonl",
        "time": "2026-11-25T22:19:36Z",
        "datacontenttype": "application/json",
        "bucket": "in",
    }
    assert event.data == {**RESOURCE, "metageneration": "1"}


@pytest.mark.parametrize(("notification_type", "event_type"), [
    ("OBJECT_DELETE", "google.cloud.storage.object.v1.deleted"),
    ("OBJECT_ARCHIVE", "google.cloud.storage.object.v1.archived"),
    ("OBJECT_METADATA_UPDATE", "google.cloud.storage.object.v1.metadataUpdated"),
])
def test_other_storage_notifications_keep_their_eventarc_types(notification_type, event_type):
    event = storage_event("1", {**NOTIFICATION, "eventType": notification_type}, json.dumps(RESOURCE).encode())
    assert event.attributes["type"] == event_type
    assert "metageneration" not in event.data, "only a finalized generation is known to be at metageneration 1"


def test_the_event_time_falls_back_to_the_objects_update_time():
    attributes = {k: v for k, v in NOTIFICATION.items() if k != "eventTime"}
    assert storage_event("1", attributes, json.dumps(RESOURCE).encode()).attributes["time"] == RESOURCE["updated"]


@pytest.mark.parametrize(("attributes", "data", "problem"), [
    ({"eventType": "SOMETHING"}, b"{}", "not a Cloud Storage notification"),
    ({**NOTIFICATION, "payloadFormat": "NONE"}, b"", "only JSON_API_V1"),
    (NOTIFICATION, b"not json", "not JSON"),
    (NOTIFICATION, b"[1]", "not a JSON object"),
    ({"eventType": "OBJECT_FINALIZE"}, b"{}", "no bucket or object"),
])
def test_what_is_not_a_storage_notification_is_refused(attributes, data, problem):
    with pytest.raises(ConversionError, match=problem):
        storage_event("1", attributes, data)


def test_a_message_becomes_eventarcs_pubsub_event():
    event = pubsub_event(
        message_id="2070443601311540", data=b"hello world", attributes={"attr1": "attr1-value"},
        publish_time=datetime(2021, 2, 26, 19, 13, 55, 749000, tzinfo=UTC),
        topic="projects/my-project/topics/my-topic", subscription="projects/my-project/subscriptions/my-sub",
    )

    assert event.attributes == {
        "specversion": "1.0",
        "id": "2070443601311540",
        "source": "//pubsub.googleapis.com/projects/my-project/topics/my-topic",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "time": "2021-02-26T19:13:55.749Z",
        "datacontenttype": "application/json",
    }
    assert event.data == {
        "subscription": "projects/my-project/subscriptions/my-sub",
        "message": {
            "attributes": {"attr1": "attr1-value"},
            "data": "aGVsbG8gd29ybGQ=",
            "messageId": "2070443601311540",
            "message_id": "2070443601311540",
            "publishTime": "2021-02-26T19:13:55.749Z",
            "publish_time": "2021-02-26T19:13:55.749Z",
        },
    }


def test_a_message_without_attributes_has_none_and_an_ordering_key_is_kept():
    plain = pubsub_event(message_id="1", data=b"\x01\x02\x03\x04", attributes={}, publish_time=datetime.now(UTC),
                         topic="projects/p/topics/t", subscription="projects/p/subscriptions/s")
    ordered = pubsub_event(message_id="1", data=b"", attributes={}, publish_time=datetime.now(UTC),
                           topic="projects/p/topics/t", subscription="projects/p/subscriptions/s", ordering_key="k")
    assert "attributes" not in plain.data["message"] and plain.data["message"]["data"] == "AQIDBA=="
    assert ordered.data["message"]["orderingKey"] == "k"
    with pytest.raises(ConversionError, match="full path"):
        pubsub_event(message_id="1", data=b"", attributes={}, publish_time=datetime.now(UTC), topic="t", subscription="s")


def test_binary_content_mode_is_what_functions_framework_reads():
    for event in example_events().values():
        headers, body = event.http()

        assert headers["content-type"] == "application/json"
        assert all(headers[f"ce-{key}"] == value for key, value in event.attributes.items() if key != "datacontenttype")
        parsed = from_http(headers, body)
        assert parsed["id"] == event.attributes["id"] and parsed["type"] == event.attributes["type"]
        assert parsed.get_data() == event.data
        if "bucket" in event.attributes:
            assert parsed["bucket"] == event.attributes["bucket"]


def test_the_fixtures_in_tests_events_are_the_conversions_output():
    for name, event in example_events().items():
        fixture = json.loads((EVENTS_DIR / f"{name}.json").read_text())
        assert fixture == event.to_json(), f"regenerate: python -m infra.local.relay --write-fixtures tests/events ({name})"
        CloudEvent(fixture["attributes"], fixture["data"])  # loadable as the functions receive it


def test_rfc3339_is_utc_with_the_digits_it_has():
    assert rfc3339(datetime(2021, 2, 5, 4, 6, 14, 109000, tzinfo=UTC)) == "2021-02-05T04:06:14.109Z"
    assert rfc3339(datetime(2021, 2, 5, 4, 6, 14, tzinfo=UTC)) == "2021-02-05T04:06:14Z"
    assert rfc3339(datetime(2021, 2, 5, 6, 6, 14, 5, tzinfo=timezone(timedelta(hours=2)))) == "2021-02-05T04:06:14.000005Z"


def test_backoff_doubles_up_to_its_ceiling():
    assert [backoff_delay(n, 0.5, 5) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


# -- deliveries -------------------------------------------------------------------------------------------


class FakeMessage:
    """The part of `google.cloud.pubsub_v1.subscriber.message.Message` the relay uses."""

    def __init__(self, message_id: str, data: bytes, attributes: dict[str, str]):
        self.message_id, self.data, self.attributes = message_id, data, attributes
        self.publish_time = datetime(2025, 1, 1, tzinfo=UTC)
        self.ordering_key = ""
        self.outcome: list[str] = []
        self.done = threading.Event()

    def ack(self) -> None:
        self.outcome.append("ack")
        self.done.set()

    def nack(self) -> None:
        self.outcome.append("nack")
        self.done.set()


STORAGE = Route("storage", "projects/p/subscriptions/gcs-relay", "http://127.0.0.1:1/submit")
PUBSUB = Route("pubsub", "projects/p/subscriptions/complete-relay", "http://127.0.0.1:1/complete", "projects/p/topics/done")


def relay_with(handler, **options) -> tuple[Relay, io.StringIO]:
    out = io.StringIO()
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return Relay([STORAGE, PUBSUB], http=http, out=out, **options), out


def storage_message(message_id: str = "7") -> FakeMessage:
    return FakeMessage(message_id, json.dumps(RESOURCE).encode(), NOTIFICATION)


def log_lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_2xx_answer_acks_and_logs_one_line():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    relay, out = relay_with(handler)
    message = storage_message()
    relay._deliver(STORAGE, message)

    assert message.outcome == ["ack"]
    assert str(seen[0].url) == STORAGE.url and seen[0].headers["ce-id"] == "7"
    [line] = log_lines(out)
    assert {k: line[k] for k in ("id", "target", "status", "outcome", "attempt")} == {
        "id": "7", "target": STORAGE.url, "status": 204, "outcome": "ack", "attempt": 1}
    assert isinstance(line["ms"], int)
    assert relay.state()["acked"] == 1 and relay.state()["recent"][0]["subject"] == "objects/incoming/a b.jsonl"


def test_a_pubsub_route_posts_the_message_published_event():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["ce-source"], json.loads(request.content)))
        return httpx.Response(200)

    relay, _ = relay_with(handler)
    message = FakeMessage("9", b'{"job_id": "j"}', {"job_id": "j"})
    relay._deliver(PUBSUB, message)

    assert message.outcome == ["ack"]
    source, body = bodies[0]
    assert source == "//pubsub.googleapis.com/projects/p/topics/done"
    assert base64.b64decode(body["message"]["data"]) == b'{"job_id": "j"}' and body["subscription"] == PUBSUB.subscription


@pytest.mark.parametrize("failure", [
    lambda request: httpx.Response(500),
    lambda request: httpx.Response(429),
    lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused", request=request)),
])
def test_a_failure_nacks_after_a_growing_backoff(failure):
    relay, out = relay_with(failure, min_backoff=0.2, max_backoff=1)
    first = storage_message()
    started = time.monotonic()
    relay._deliver(STORAGE, first)
    assert first.outcome == [] and relay.state()["waiting_retry"] == 1, "not nacked before the backoff"
    assert first.done.wait(5)
    assert first.outcome == ["nack"] and time.monotonic() - started >= 0.2
    redelivered = storage_message()
    relay._deliver(STORAGE, redelivered)
    assert redelivered.done.wait(5)

    attempts = [(line["attempt"], line["retry_in_s"], line["outcome"]) for line in log_lines(out)]
    assert attempts == [(1, 0.2, "nack"), (2, 0.4, "nack")]
    assert relay.state()["waiting_retry"] == 0


def test_stop_nacks_what_waits_for_a_retry_at_once():
    relay, _ = relay_with(lambda request: httpx.Response(503), min_backoff=60, max_backoff=60)
    message = storage_message()
    relay._deliver(STORAGE, message)
    assert message.outcome == []
    relay.stop()
    assert message.outcome == ["nack"]


def test_an_unconvertible_message_is_logged_and_acked_never_posted():
    relay, out = relay_with(lambda request: pytest.fail("posted"))
    message = FakeMessage("3", b"not json", NOTIFICATION)
    relay._deliver(STORAGE, message)

    assert message.outcome == ["ack"]
    assert log_lines(out)[0]["message"] == "dropped: not convertible" and relay.state()["dropped"] == 1


def test_no_more_than_max_in_flight_posts_at_once():
    lock, release = threading.Lock(), threading.Event()
    current = peak = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        release.wait(5)
        with lock:
            current -= 1
        return httpx.Response(200)

    relay, _ = relay_with(handler, max_in_flight=2)
    messages = [storage_message(str(i)) for i in range(6)]
    threads = [threading.Thread(target=relay._deliver, args=(STORAGE, m)) for m in messages]
    for thread in threads:
        thread.start()
    wait_until(lambda: relay.state()["in_flight"] == 2, 5, what="two deliveries in flight")
    release.set()
    for thread in threads:
        thread.join(5)

    assert peak == 2
    assert all(m.outcome == ["ack"] for m in messages)


def test_drain_forgets_what_was_published_until_now_and_only_that():
    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["ce-id"])
        return httpx.Response(503 if request.headers["ce-id"] == "old" else 200)

    relay, _ = relay_with(handler, min_backoff=60, max_backoff=60)
    waiting = storage_message("old")
    relay._deliver(STORAGE, waiting)
    assert waiting.outcome == [] and relay.state()["waiting_retry"] == 1

    state = relay.drain()
    queued = storage_message("queued")  # published before the drain, delivered after it
    relay._deliver(STORAGE, queued)
    fresh = storage_message("fresh")
    fresh.publish_time = datetime.now(UTC) + timedelta(seconds=1)
    relay._deliver(STORAGE, fresh)

    assert state["waiting_retry"] == 0 and waiting.outcome == ["ack"]
    assert queued.outcome == ["ack"] and fresh.outcome == ["ack"]
    assert posted == ["old", "fresh"] and relay.state()["drained"] == 2
