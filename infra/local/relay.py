"""Eventarc, locally: Pub/Sub messages become CloudEvents POSTed to the functions.

Two kinds of route, each a subscription and a target URL:

- `storage`: a Cloud Storage notification (fake-gcs-server publishes one per finalize, in the
  `JSON_API_V1` payload format) becomes `google.cloud.storage.object.v1.finalized` (or deleted, archived,
  metadataUpdated), as Eventarc's Cloud Storage trigger delivers it;
- `pubsub`: any message becomes `google.cloud.pubsub.topic.v1.messagePublished`, as Eventarc's Pub/Sub
  trigger delivers it.

Both in binary content mode: the attributes as `ce-*` headers, the data as a JSON body. The conversions
are pure functions (`storage_event`, `pubsub_event`) so tests can build the same events.

Delivery guarantees, as Eventarc with retries on: at least once; a message is acked only when the target
answers 2xx, otherwise nacked after an exponential backoff (so it is redelivered); a message that cannot be
converted is logged and acked (Eventarc would never produce it). At most `max_in_flight` POSTs at a time.
One JSON line per delivery on stdout. The relay holds no credentials and forwards none.

Run: `python -m infra.local.relay --storage SUBSCRIPTION=URL --pubsub SUBSCRIPTION=URL [--port N]`, with
PUBSUB_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT set. With `--port`: `GET /health` gives counters and the
recent deliveries, `POST /drain` forgets every message published so far (between tests).
`--write-fixtures DIR` writes the JSON fixtures of `tests/events/` instead.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = [
    "PUBSUB_MESSAGE_PUBLISHED",
    "STORAGE_EVENT_TYPES",
    "CloudEventMessage",
    "ConversionError",
    "Relay",
    "Route",
    "backoff_delay",
    "example_events",
    "pubsub_event",
    "rfc3339",
    "storage_event",
    "write_fixtures",
]

SPECVERSION = "1.0"
PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
# Cloud Storage notification `eventType` -> Eventarc CloudEvent type.
STORAGE_EVENT_TYPES = {
    "OBJECT_FINALIZE": "google.cloud.storage.object.v1.finalized",
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}

DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_TIMEOUT_SECONDS = 600.0  # a little over the functions' 540 s limit
DEFAULT_MIN_BACKOFF_SECONDS = 0.5  # Eventarc: 10 s .. 600 s; shorter here so local retries are seen
DEFAULT_MAX_BACKOFF_SECONDS = 30.0
MAX_OUTSTANDING_MESSAGES = 100  # leased at once per subscription, including those waiting to be retried
RECENT_DELIVERIES = 200  # kept for the health endpoint


class ConversionError(ValueError):
    """A message is not what the route expects: it cannot become a CloudEvent."""


@dataclass(frozen=True)
class CloudEventMessage:
    """A CloudEvent as attributes (id, source, type, ...) and JSON data; `http()` gives the binary-mode request."""

    attributes: dict[str, str]
    data: dict[str, Any]

    def http(self) -> tuple[dict[str, str], bytes]:
        """Headers and body in binary content mode: `ce-<attribute>` headers (values percent-encoded as the
        CloudEvents HTTP binding says, so an object name in any script travels), the data as the body."""
        headers = {f"ce-{key}": _header_value(value) for key, value in self.attributes.items() if key != "datacontenttype"}
        headers["content-type"] = self.attributes.get("datacontenttype", "application/json")
        return headers, json.dumps(self.data, separators=(",", ":"), ensure_ascii=False).encode()

    def to_json(self) -> dict[str, Any]:
        """The fixture form: `{"attributes": ..., "data": ...}` (`cloudevents.http.CloudEvent(**it)`)."""
        return {"attributes": dict(self.attributes), "data": self.data}


# -- conversions (pure) -----------------------------------------------------------------------------


def _header_value(value: str) -> str:
    """Percent-encode space, `"`, `%` and everything outside printable ASCII, as UTF-8 (CloudEvents HTTP
    protocol binding, 3.1.3.2)."""
    return "".join(
        char if "!" <= char <= "~" and char not in '"%' else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in value
    )


def rfc3339(moment: datetime) -> str:
    """`moment` in RFC 3339, UTC, `Z`-suffixed, with the sub-second digits it has (none if whole)."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def storage_event(message_id: str, attributes: Mapping[str, str], data: bytes) -> CloudEventMessage:
    """The CloudEvent Eventarc delivers for a Cloud Storage notification (`payloadFormat=JSON_API_V1`).

    `ce-id` is the notification's message id, `ce-source` the bucket, `ce-subject` `objects/NAME`,
    `ce-time` the notification's `eventTime`; the `bucket` extension names the bucket; the data is the
    object's JSON API resource as published. Raises `ConversionError` for anything else.
    """
    event_type = STORAGE_EVENT_TYPES.get(attributes.get("eventType", ""))
    if event_type is None:
        raise ConversionError(f"not a Cloud Storage notification: eventType={attributes.get('eventType')!r}")
    if attributes.get("payloadFormat", "JSON_API_V1") != "JSON_API_V1":
        raise ConversionError(f"payloadFormat {attributes['payloadFormat']!r}: only JSON_API_V1 carries the object")
    try:
        resource = json.loads(data)
    except ValueError as exc:
        raise ConversionError(f"notification data is not JSON: {exc}") from exc
    if not isinstance(resource, dict):
        raise ConversionError("notification data is not a JSON object")
    bucket = attributes.get("bucketId") or resource.get("bucket")
    name = attributes.get("objectId") or resource.get("name")
    if not bucket or not name:
        raise ConversionError("notification names no bucket or object")
    if event_type.endswith(".finalized"):
        # A finalized generation's metadata is at its first version; fake-gcs-server leaves the field out.
        resource.setdefault("metageneration", "1")
    event_time = attributes.get("eventTime") or resource.get("updated") or resource.get("timeCreated")
    event = {
        "specversion": SPECVERSION,
        "id": message_id,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "type": event_type,
        "subject": f"objects/{name}",
        "datacontenttype": "application/json",
        "bucket": bucket,
    }
    if event_time:
        event["time"] = event_time
    return CloudEventMessage(event, resource)


def pubsub_event(
    *,
    message_id: str,
    data: bytes,
    attributes: Mapping[str, str],
    publish_time: datetime,
    topic: str,
    subscription: str,
    ordering_key: str = "",
) -> CloudEventMessage:
    """The CloudEvent Eventarc delivers for a message published to `topic` (`projects/P/topics/T`).

    The data is `{"message": {...}, "subscription": ...}` with the message's data in base64 and both
    spellings of the id and time (`messageId`/`message_id`, `publishTime`/`publish_time`), as Eventarc
    sends them; `attributes` is left out when there are none, as on the wire.
    """
    if not topic.startswith("projects/") or "/topics/" not in topic:
        raise ConversionError(f"topic must be a full path projects/P/topics/T, not {topic!r}")
    published = rfc3339(publish_time)
    message: dict[str, Any] = {"data": base64.b64encode(data).decode("ascii")}
    if attributes:
        message["attributes"] = dict(attributes)
    message.update({"messageId": message_id, "message_id": message_id, "publishTime": published, "publish_time": published})
    if ordering_key:
        message["orderingKey"] = ordering_key
    event = {
        "specversion": SPECVERSION,
        "id": message_id,
        "source": f"//pubsub.googleapis.com/{topic}",
        "type": PUBSUB_MESSAGE_PUBLISHED,
        "time": published,
        "datacontenttype": "application/json",
    }
    return CloudEventMessage(event, {"message": message, "subscription": subscription})


def backoff_delay(attempt: int, minimum: float, maximum: float) -> float:
    """Seconds to wait before the redelivery that follows failed attempt `attempt` (1, 2, ...): doubling."""
    return min(maximum, minimum * 2 ** max(0, attempt - 1))


def example_events() -> dict[str, CloudEventMessage]:
    """The events of `tests/events/`, built by the conversions above from realistic inputs."""
    resource = {
        "kind": "storage#object",
        "id": "embeddings-input/incoming/docs.jsonl/1732832936756275",
        "name": "incoming/docs.jsonl",
        "bucket": "embeddings-input",
        "generation": "1732832936756275",
        "metageneration": "1",
        "contentType": "application/x-ndjson",
        "timeCreated": "2025-09-15T10:00:00.123Z",
        "updated": "2025-09-15T10:00:00.123Z",
        "storageClass": "STANDARD",
        "size": "14",  # the hashes are those of b'{"text":"hi"}\n'
        "md5Hash": "BDnsV5zLMWwiDRYgdE9EeA==",
        "crc32c": "/Krp3g==",
        "etag": "CLPk2Z3I7IkDEAE=",
        "metadata": {"model": "gemini-embedding-001"},
    }
    notification = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": "embeddings-input",
        "objectId": "incoming/docs.jsonl",
        "objectGeneration": "1732832936756275",
        "eventTime": "2025-09-15T10:00:00.123Z",
        "payloadFormat": "JSON_API_V1",
        "notificationConfig": "projects/_/buckets/embeddings-input/notificationConfigs/1",
    }
    completion = {"job_id": "job-0123456789abcdef"}
    return {
        "storage_finalized": storage_event("8123456789012345", notification, json.dumps(resource).encode()),
        "pubsub_message_published": pubsub_event(
            message_id="9123456789012345",
            data=json.dumps(completion).encode(),
            attributes=completion,
            publish_time=datetime(2025, 9, 15, 10, 5, 0, 456000, tzinfo=UTC),
            topic="projects/local-project/topics/embedding-complete",
            subscription="projects/local-project/subscriptions/embedding-complete-relay",
        ),
    }


def write_fixtures(directory: Path) -> list[Path]:
    """Write `example_events()` as `DIRECTORY/NAME.json`; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, event in example_events().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(event.to_json(), indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


# -- the relay (I/O) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Messages of `subscription` (a full path) become `kind` CloudEvents POSTed to `url`."""

    kind: Literal["storage", "pubsub"]
    subscription: str
    url: str
    topic: str = ""  # for `pubsub`: the subscription's topic, looked up at start when empty


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    waiting_retry: int = 0
    acked: int = 0
    nacked: int = 0
    dropped: int = 0
    drained: int = 0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_DELIVERIES))


class Relay:
    """Streaming-pulls each route's subscription and delivers its messages (see the module docstring)."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        subscriber: Any = None,
        http: httpx.Client | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        min_backoff: float = DEFAULT_MIN_BACKOFF_SECONDS,
        max_backoff: float = DEFAULT_MAX_BACKOFF_SECONDS,
        out: Any = None,
        subscription_wait: float = 60.0,
    ):
        self._routes = list(routes)
        self._subscription_wait = subscription_wait
        self._subscriber = subscriber
        self._http = http or httpx.Client(timeout=timeout, trust_env=False)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._out = out or sys.stdout
        self._out_lock = threading.Lock()
        self._attempts: dict[tuple[str, str], int] = {}
        self._waiting: dict[threading.Timer, Any] = {}  # retry timer -> its message
        self._futures: list[Any] = []
        self._stats = _Stats()
        self._stopping = threading.Event()
        self._cutoff: datetime | None = None  # messages published until then are dropped (`drain`)

    # lifecycle

    def start(self) -> None:
        """Check every subscription exists (and learn the Pub/Sub routes' topics), then start pulling."""
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

        if self._subscriber is None:
            self._subscriber = pubsub_v1.SubscriberClient()
        resolved = []
        for route in self._routes:
            found = self._await_subscription(route.subscription)
            if route.kind == "pubsub" and not route.topic:
                route = Route(route.kind, route.subscription, route.url, found.topic)
            resolved.append(route)
        self._routes = resolved
        for route in self._routes:
            executor = ThreadPoolExecutor(max_workers=self._max_in_flight, thread_name_prefix=f"relay-{route.kind}")
            future = self._subscriber.subscribe(
                route.subscription,
                callback=lambda message, route=route: self._deliver(route, message),
                flow_control=pubsub_v1.types.FlowControl(max_messages=MAX_OUTSTANDING_MESSAGES),
                scheduler=ThreadScheduler(executor=executor),
            )
            self._futures.append(future)

    def _await_subscription(self, subscription: str) -> Any:
        """The subscription, once it exists: the relay may start while the stack still creates it."""
        from google.api_core import exceptions

        deadline = time.monotonic() + self._subscription_wait
        while True:
            try:
                return self._subscriber.get_subscription(subscription=subscription, timeout=5)
            except (exceptions.NotFound, exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.RetryError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; messages waiting for a retry are nacked now, so the next relay gets them at once."""
        self._stopping.set()
        with self._stats.lock:
            waiting = self._take_waiting()
        for message in waiting:
            message.nack()
        for future in self._futures:
            future.cancel()
        for future in self._futures:
            with contextlib.suppress(Exception):  # a cancelled stream may end with one: expected
                future.result(timeout=timeout)
        self._http.close()

    def state(self) -> dict[str, Any]:
        """Counters and the most recent deliveries (served on the health endpoint)."""
        with self._stats.lock:
            return {
                "ok": not any(future.done() for future in self._futures),
                "routes": [{"kind": r.kind, "subscription": r.subscription, "url": r.url} for r in self._routes],
                "in_flight": self._stats.in_flight,
                "waiting_retry": self._stats.waiting_retry,
                "acked": self._stats.acked,
                "nacked": self._stats.nacked,
                "dropped": self._stats.dropped,
                "drained": self._stats.drained,
                "recent": list(self._stats.recent),
            }

    # one delivery

    def drain(self) -> dict[str, Any]:
        """Forget every message published until now (acked, never posted), as a subscription seek to now
        would: those waiting for a retry at once, those still queued or redelivered when they come. Returns
        the state; deliveries already in flight finish (wait for `in_flight` to reach 0)."""
        with self._stats.lock:
            self._cutoff = datetime.now(UTC)
            waiting = self._take_waiting()
            self._stats.drained += len(waiting)
            self._attempts.clear()
        for message in waiting:
            message.ack()
        return self.state()

    def _take_waiting(self) -> list[Any]:
        """The messages waiting for a retry, their timers cancelled: the caller acks or nacks them.
        Call with the stats lock held."""
        waiting = list(self._waiting.items())
        self._waiting.clear()
        self._stats.waiting_retry = 0
        for timer, _ in waiting:
            timer.cancel()
        return [message for _, message in waiting]

    def _deliver(self, route: Route, message: Any) -> None:
        """The subscriber's callback: every message ends acked, or nacked (now or after a backoff)."""
        try:
            self._deliver_once(route, message)
        except Exception as exc:  # noqa: BLE001 - a bug here must not strand the message's lease
            self.log({"severity": "ERROR", "message": "relay error, message nacked", "id": message.message_id,
                      "error": f"{type(exc).__name__}: {exc}"})
            self._nack_later(message, self._max_backoff)  # never a hot redelivery loop

    def _deliver_once(self, route: Route, message: Any) -> None:
        with self._stats.lock:
            cutoff = self._cutoff
        if cutoff is not None and message.publish_time <= cutoff:
            with self._stats.lock:
                self._stats.drained += 1
            message.ack()
            return
        try:
            event = self._convert(route, message)
        except ConversionError as exc:
            self.log({"severity": "ERROR", "message": "dropped: not convertible", "id": message.message_id,
                       "subscription": route.subscription, "error": str(exc)})
            with self._stats.lock:
                self._stats.dropped += 1
            message.ack()
            return
        key = (route.subscription, message.message_id)
        with self._stats.lock:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
        headers, body = event.http()
        status: int | None = None
        error = ""
        with self._slots:
            with self._stats.lock:
                self._stats.in_flight += 1
            started = time.monotonic()
            try:
                status = self._http.post(route.url, headers=headers, content=body).status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                elapsed_ms = round((time.monotonic() - started) * 1000)
                with self._stats.lock:
                    self._stats.in_flight -= 1
        entry: dict[str, Any] = {"id": message.message_id, "type": event.attributes["type"]}
        if "subject" in event.attributes:
            entry["subject"] = event.attributes["subject"]
        entry.update(target=route.url, status=status, ms=elapsed_ms, attempt=attempt)
        if error:
            entry["error"] = error
        if status is not None and 200 <= status < 300:
            message.ack()
            with self._stats.lock:
                self._attempts.pop(key, None)
                self._stats.acked += 1
                self._stats.recent.append({**entry, "outcome": "ack"})
            self.log({"severity": "INFO", "message": "delivered", **entry, "outcome": "ack"})
            return
        delay = backoff_delay(attempt, self._min_backoff, self._max_backoff)
        entry.update(outcome="nack", retry_in_s=delay)
        with self._stats.lock:
            self._stats.nacked += 1
            self._stats.recent.append(entry)
        self.log({"severity": "WARNING", "message": "delivery failed, retrying", **entry})
        self._nack_later(message, delay)

    def _convert(self, route: Route, message: Any) -> CloudEventMessage:
        if route.kind == "storage":
            return storage_event(message.message_id, dict(message.attributes), message.data)
        return pubsub_event(
            message_id=message.message_id,
            data=message.data,
            attributes=dict(message.attributes),
            publish_time=message.publish_time,
            topic=route.topic,
            subscription=route.subscription,
            ordering_key=message.ordering_key,
        )

    def _nack_later(self, message: Any, delay: float) -> None:
        if self._stopping.is_set():
            message.nack()
            return

        def fire() -> None:
            with self._stats.lock:
                if self._waiting.pop(timer, None) is None:
                    return  # `stop` nacked it already
                self._stats.waiting_retry -= 1
            message.nack()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._stats.lock:
            self._waiting[timer] = message
            self._stats.waiting_retry += 1
        timer.start()

    def log(self, entry: dict[str, Any]) -> None:
        """Write `entry` as one JSON line."""
        entry = {"time": rfc3339(datetime.now(UTC)), "logger": "relay", **entry}
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._out_lock:
            print(line, file=self._out, flush=True)


# -- command line -----------------------------------------------------------------------------------


def _route_arg(kind: str, project: str):
    def parse(text: str) -> Route:
        subscription, sep, url = text.partition("=")
        if not sep or not subscription or not url:
            raise argparse.ArgumentTypeError(f"expected SUBSCRIPTION=URL, got {text!r}")
        if not subscription.startswith("projects/"):
            subscription = f"projects/{project}/subscriptions/{subscription}"
        return Route(kind, subscription, url)  # type: ignore[arg-type]

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project")
    parser = argparse.ArgumentParser(prog="python -m infra.local.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", action="append", default=[], type=_route_arg("storage", project),
                        metavar="SUBSCRIPTION=URL", help="Cloud Storage notifications -> storage CloudEvents")
    parser.add_argument("--pubsub", action="append", default=[], type=_route_arg("pubsub", project),
                        metavar="SUBSCRIPTION=URL", help="any message -> messagePublished CloudEvents")
    parser.add_argument("--host", default="127.0.0.1", help="health endpoint host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("RELAY_PORT", "0")),
                        help="health endpoint port (GET /health: counters and recent deliveries); 0: none")
    parser.add_argument("--max-in-flight", type=int, default=int(os.environ.get("RELAY_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("RELAY_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)))
    parser.add_argument("--min-backoff", type=float,
                        default=float(os.environ.get("RELAY_MIN_BACKOFF_SECONDS", DEFAULT_MIN_BACKOFF_SECONDS)))
    parser.add_argument("--max-backoff", type=float,
                        default=float(os.environ.get("RELAY_MAX_BACKOFF_SECONDS", DEFAULT_MAX_BACKOFF_SECONDS)))
    parser.add_argument("--write-fixtures", type=Path, metavar="DIR", help="write the tests/events fixtures and exit")
    args = parser.parse_args(argv)

    if args.write_fixtures:
        for path in write_fixtures(args.write_fixtures):
            print(path)
        return 0
    routes = [*args.storage, *args.pubsub]
    if not routes:
        parser.error("no route: give --storage and/or --pubsub")
    if "PUBSUB_EMULATOR_HOST" not in os.environ:
        parser.error("PUBSUB_EMULATOR_HOST is not set: the relay only talks to the Pub/Sub emulator")

    relay = Relay(routes, max_in_flight=args.max_in_flight, timeout=args.timeout,
                  min_backoff=args.min_backoff, max_backoff=args.max_backoff)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    relay.start()
    server = None
    if args.port:
        from infra.local.processes import serve_json

        server = serve_json(args.host, args.port, relay.state, {"drain": relay.drain})
    relay.log({"severity": "INFO", "message": "relay started",
                "routes": [f"{r.kind}:{r.subscription} -> {r.url}" for r in routes]})
    try:
        while not done.wait(1.0):
            if not relay.state()["ok"]:
                relay.log({"severity": "ERROR", "message": "a subscription stream ended; exiting"})
                return 1
    finally:
        if server is not None:
            server.shutdown()
        relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
