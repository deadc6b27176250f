"""The relay's CloudEvents are Eventarc's, and its deliveries ack, retry, dead-letter and drop as Eventarc
and Pub/Sub push would; its fronts pass a function's requests through to a free instance.

Deliveries to URLs go through `httpx.MockTransport`, messages are stand-ins for the Pub/Sub client's and
dead letters go to a recording publisher; a function's instances are real processes (the tiny server of
tests/unit/instance_server.py) on 127.0.0.1. Expected values follow Eventarc's documented formats
(cloud.google.com/eventarc/docs/cloudevents and cloudevents-json; googleapis/google-cloudevents testdata)
and Pub/Sub's dead-letter attributes (cloud.google.com/pubsub/docs/handling-failures).
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from cloudevents.http import CloudEvent, from_http

from infra.local.processes import InstancePool, free_port, wait_until
from infra.local.relay import (
    DEAD_LETTER_ATTRIBUTES,
    ConversionError,
    Relay,
    Route,
    backoff_delay,
    example_events,
    load_config,
    pubsub_event,
    rfc3339,
    serve_front,
    storage_event,
)

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"
SERVER = Path(__file__).with_name("instance_server.py")  # a tiny HTTP server, run as a function's instances
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
    wait_until(lambda: current == 2, 5, what="two POSTs under way")
    assert relay.state()["in_flight"] == 6, "the others wait for a slot, counted in flight"
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


# -- dead letters -----------------------------------------------------------------------------------------

DLQ = "projects/p/topics/submit-dlq"
DEAD_LETTERED = Route("storage", "projects/p/subscriptions/relay-submit", "http://127.0.0.1:1/submit",
                      dead_letter_topic=DLQ)


class Published:
    def result(self, timeout: float | None = None) -> str:
        return "1"


class RecordingPublisher:
    def __init__(self, fail: bool = False):
        self.fail, self.published = fail, []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Published:
        if self.fail:
            raise RuntimeError("Pub/Sub unavailable")
        self.published.append((topic, data, attributes))
        return Published()


def dead_letter_relay(publisher: RecordingPublisher, attempts: int = 3) -> tuple[Relay, io.StringIO]:
    out = io.StringIO()
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    relay = Relay([DEAD_LETTERED], http=http, out=out, publisher=publisher, min_backoff=0.01, max_backoff=0.02,
                  max_delivery_attempts=attempts)
    return relay, out


def deliver_until_settled(relay: Relay, route: Route, make) -> list[FakeMessage]:
    """Deliver (a fresh copy of) the message until one delivery acks it, as Pub/Sub redelivers a nack."""
    deliveries = []
    for _ in range(20):
        message = make()
        deliveries.append(message)
        relay._deliver(route, message)
        assert message.done.wait(5)
        if message.outcome == ["ack"]:
            return deliveries
    raise AssertionError("never settled")


def test_after_max_attempts_a_message_goes_to_the_dead_letter_topic_with_pubsubs_attributes():
    publisher = RecordingPublisher()
    relay, out = dead_letter_relay(publisher, attempts=3)

    deliveries = deliver_until_settled(relay, DEAD_LETTERED, storage_message)

    assert [m.outcome for m in deliveries] == [["nack"], ["nack"], ["ack"]]
    [(topic, data, attributes)] = publisher.published
    assert topic == DLQ and data == json.dumps(RESOURCE).encode()
    assert attributes == {**NOTIFICATION, "CloudPubSubDeadLetterSourceDeliveryCount": "3",
                          "CloudPubSubDeadLetterSourceSubscription": "relay-submit",
                          "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
                          "CloudPubSubDeadLetterSourceTopicPublishTime": "2025-01-01T00:00:00Z"}
    assert set(DEAD_LETTER_ATTRIBUTES) <= set(attributes)
    state = relay.state()
    assert state["dead_lettered"] == 1 and state["routes"][0]["dead_lettered"] == 1
    assert state["routes"][0]["failed"] == 2 and state["acked"] == 1
    assert log_lines(out)[-1]["outcome"] == "dead-lettered" and log_lines(out)[-1]["attempt"] == 3


def test_a_dead_letter_that_cannot_be_published_is_kept_and_retried():
    relay, out = dead_letter_relay(RecordingPublisher(fail=True), attempts=1)
    message = storage_message()
    relay._deliver(DEAD_LETTERED, message)
    assert message.done.wait(5)
    assert message.outcome == ["nack"] and relay.state()["dead_lettered"] == 0
    assert "Pub/Sub unavailable" in log_lines(out)[-1]["error"]


def test_without_a_dead_letter_topic_or_with_zero_attempts_nothing_is_dead_lettered():
    publisher = RecordingPublisher()
    plain = Route("storage", "projects/p/subscriptions/s", "http://127.0.0.1:1/")
    for route, attempts in ((plain, 1), (DEAD_LETTERED, 0)):
        relay = Relay([route], http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503))),
                      out=io.StringIO(), publisher=publisher, min_backoff=0.01, max_backoff=0.01,
                      max_delivery_attempts=attempts)
        for _ in range(3):
            message = storage_message()
            relay._deliver(route, message)
            assert message.done.wait(5) and message.outcome == ["nack"]
    assert publisher.published == []


# -- drops ----------------------------------------------------------------------------------------------------


def test_drop_loses_the_next_n_deliveries_of_one_trigger_only():
    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["ce-id"])
        return httpx.Response(204)

    storage = Route("storage", "projects/p/subscriptions/relay-submit", "http://127.0.0.1:1/", function="",
                    trigger="storage")
    relay = Relay([storage, PUBSUB], http=httpx.Client(transport=httpx.MockTransport(handler)), out=io.StringIO())
    state = relay.drop({"trigger": "storage", "count": 2})
    assert [r["drops_pending"] for r in state["routes"]] == [2, 0]

    messages = [storage_message(str(i)) for i in range(3)]
    for message in messages:
        relay._deliver(storage, message)
    other = FakeMessage("9", b"{}", {})
    relay._deliver(PUBSUB, other)

    assert all(m.outcome == ["ack"] for m in [*messages, other])
    assert posted == ["2", "9"], "the first two storage events were lost, the topic's untouched"
    state = relay.state()
    assert state["dropped_on_request"] == 2 and state["routes"][0]["drops_pending"] == 0
    assert [d["outcome"] for d in state["recent"][:2]] == ["dropped", "dropped"]
    assert state["recent"][0]["subject"] == "objects/incoming/a b.jsonl"


@pytest.mark.parametrize(("params", "problem"), [
    ({"trigger": "nope"}, "no route 'nope'; known:"),
    ({"trigger": "storage", "count": -1}, "count must be"),
    ({"trigger": "storage", "count": "2"}, "count must be"),
])
def test_a_bad_drop_request_is_refused_with_what_is_known(params, problem):
    relay = Relay([Route("storage", "projects/p/subscriptions/x", "http://127.0.0.1:1/", trigger="storage")],
                  http=httpx.Client(), out=io.StringIO())
    with pytest.raises(ValueError, match=problem):
        relay.drop(params)


def test_drain_cancels_pending_drops():
    relay, _ = relay_with(lambda request: httpx.Response(200))
    relay.drop({"trigger": STORAGE.subscription, "count": 5})
    relay.drain()
    assert relay.state()["routes"][0]["drops_pending"] == 0


def test_a_route_names_one_target():
    with pytest.raises(ValueError, match="a URL or a function"):
        Relay([Route("pubsub", "projects/p/subscriptions/s", "http://x/", function="f")])
    with pytest.raises(ValueError, match="no function 'f'"):
        Relay([Route("pubsub", "projects/p/subscriptions/s", function="f")])


# -- a hosted function --------------------------------------------------------------------------------------


def server_pool(tmp_path: Path, name: str = "fn", **options) -> InstancePool:
    return InstancePool(name, [sys.executable, str(SERVER), "{port}"], log_path=lambda i: tmp_path / f"{name}-{i}.log",
                        health_path="/health", ready_timeout=30, **{"timeout": 30.0, **options})


def test_a_delivery_past_the_functions_timeout_is_a_failure_and_its_redelivery_goes_to_the_new_instance(tmp_path):
    pool = server_pool(tmp_path, timeout=1.0)
    pool.start()
    route = Route("pubsub", "projects/p/subscriptions/relay-fn", function="fn", topic="projects/p/topics/t")
    out = io.StringIO()
    relay = Relay([route], functions={"fn": pool}, urls={"fn": "http://127.0.0.1:9/"}, out=out,
                  http=httpx.Client(trust_env=False), min_backoff=0.01, max_backoff=0.01)
    try:
        first = pool.instances[0].process.pid
        # The instance server sleeps on /sleep/N paths only: route the first delivery there by a transport
        # that rewrites the path, as a slow function would be.
        paths = iter(["/sleep/30", "/"])
        relay._http = httpx.Client(trust_env=False, transport=PathRewriter(paths))
        deliveries = deliver_until_settled(relay, route, lambda: FakeMessage("5", b"x", {}))
    finally:
        relay.stop()

    assert [m.outcome for m in deliveries] == [["nack"], ["ack"]]
    nack, ack = log_lines(out)[-2:]
    assert nack["status"] is None and "timed out after 1s" in nack["error"] and nack["function"] == "fn"
    assert ack["status"] == 200 and ack["attempt"] == 2 and ack["target"] == "http://127.0.0.1:9/"
    stats = relay.state()["functions"]["fn"]
    assert (stats["invocations"], stats["timeouts"]) == (2, 1) and stats["longest_invocation_s"] >= 1.0
    assert stats["instances"][0]["restarts"] == 1 and stats["instances"][0]["pid"] != first


class PathRewriter(httpx.HTTPTransport):
    """Sends each request to the next path of `paths`, on the host it was meant for."""

    def __init__(self, paths):
        super().__init__()
        self._paths = paths

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(path=next(self._paths))
        return super().handle_request(request)


def test_the_front_passes_requests_through_and_answers_504_past_the_timeout(tmp_path):
    pool = server_pool(tmp_path, timeout=1.0)
    pool.start()
    port = free_port()
    client = httpx.Client(trust_env=False)
    front = serve_front("127.0.0.1", port, pool, client, lambda entry: None)
    base = f"http://127.0.0.1:{port}"
    try:
        answer = httpx.post(f"{base}/jobs/x:cancel?a=1&b=%20", content=b"payload", trust_env=False,
                            headers={"Authorization": "Bearer t", "X-Custom": "v", "Connection": "close"})
        body = answer.json()
        assert answer.status_code == 200 and answer.headers["x-instance"] == "yes"
        assert (body["method"], body["path"], body["body"]) == ("POST", "/jobs/x:cancel?a=1&b=%20", "payload")
        assert body["headers"]["authorization"] == "Bearer t" and body["headers"]["x-custom"] == "v"
        assert httpx.get(f"{base}/status/418", trust_env=False).status_code == 418
        raw = httpx.get(f"{base}/gzip", trust_env=False)
        assert raw.headers["content-encoding"] == "gzip" and raw.content == b"compressed"

        slow = httpx.get(f"{base}/sleep/30", trust_env=False, timeout=30)
        assert slow.status_code == 504 and "timed out after 1s" in slow.text
        wait_until(pool.ready, 30, what="the instance back")
        assert httpx.get(f"{base}/", trust_env=False).status_code == 200
        assert pool.state()["timeouts"] == 1
    finally:
        front.shutdown()
        pool.close()
        client.close()


def test_the_config_file_gives_the_routes_and_pools(tmp_path):
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({
        "functions": [{"name": "fn", "port": 1, "argv": ["x", "{port}"], "env": {"A": "1"}, "logs": str(tmp_path),
                       "instances": 2, "concurrency": 1, "timeout_s": 7, "health_path": "/health"}],
        "routes": [{"kind": "pubsub", "subscription": "projects/p/subscriptions/relay-fn", "function": "fn",
                    "trigger": "FN_TOPIC", "dead_letter_topic": "projects/p/topics/fn-dlq"}],
        "instances_file": str(tmp_path / "instances.json"),
    }))
    routes, pools, _ = load_config(path, lambda entry: None)
    assert routes == [Route("pubsub", "projects/p/subscriptions/relay-fn", function="fn", trigger="FN_TOPIC",
                            dead_letter_topic="projects/p/topics/fn-dlq")]
    pool = pools["fn"]
    assert (len(pool.instances), pool.timeout) == (2, 7.0)
    assert [i.process.log_path.name for i in pool.instances] == ["fn.log", "fn-1.log"]
    assert pool.instances[0].process.argv == ["x", str(pool.instances[0].port)]

    path.write_text(json.dumps({"functions": [{"name": "fn"}]}))
    with pytest.raises(ValueError, match="bad relay config"):
        load_config(path, lambda entry: None)
