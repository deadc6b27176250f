"""Eventarc, Pub/Sub push and the functions' instances, locally.

The relay hosts the functions: each runs as N functions-framework processes (`InstancePool`: one call at a
time each unless the row says otherwise), behind a front on the function's own URL that hands each request
to a free instance. A call that runs past the function's timeout has its instance's process group killed
and the instance restarted, as Cloud Functions ends it; the caller gets a 504.

Two kinds of route, each a subscription and a target (a hosted function, or any URL):

- `storage`: a Cloud Storage notification (fake-gcs-server publishes one per finalize, in the
  `JSON_API_V1` payload format) becomes `google.cloud.storage.object.v1.finalized` (or deleted, archived,
  metadataUpdated), as Eventarc's Cloud Storage trigger delivers it;
- `pubsub`: any message becomes `google.cloud.pubsub.topic.v1.messagePublished`, as Eventarc's Pub/Sub
  trigger delivers it.

Both in binary content mode: the attributes as `ce-*` headers, the data as a JSON body. The conversions
are pure functions (`storage_event`, `pubsub_event`) so tests can build the same events.

Delivery guarantees, as Pub/Sub push with retries on: at least once; a message is acked only when the
target answers 2xx, otherwise nacked after an exponential backoff (so it is redelivered). A timed-out
invocation is a failed delivery. After `max_delivery_attempts` failed attempts a message of a route with a
dead-letter topic is published there (its data and attributes, plus Pub/Sub's `CloudPubSubDeadLetter*`
attributes) and acked. A message that cannot be converted is logged and acked (Eventarc would never
produce it). One JSON line per delivery on stdout. The relay's own environment holds no credentials; the
functions' settings come from the config file.

Run: `python -m infra.local.relay --config FILE` (functions and routes, as `infra.local.stack` writes it)
and/or `--storage SUBSCRIPTION=URL --pubsub SUBSCRIPTION=URL`, with PUBSUB_EMULATOR_HOST and
GOOGLE_CLOUD_PROJECT set. With `--port`: `GET /health` gives counters, per function (invocations, longest
invocation, timeouts, dead-lettered, instances) and the recent deliveries; `GET /ready` answers 200 once
every instance answers and every subscription is pulled; `POST /drain` forgets every message published so
far (between tests); `POST /drop {"trigger": T, "count": N}` drops (acks unseen) the next N deliveries of
route T (a function's name, or its trigger: `storage`, `COMPLETE_TOPIC`, ...), as if they were lost;
`POST /reset_stats` zeroes the per-function counters. `--write-fixtures DIR` writes the JSON fixtures of
`tests/events/` instead.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx

from infra.local.processes import InstancePool, Invocation, PoolClosed

__all__ = [
    "DEAD_LETTER_ATTRIBUTES",
    "PUBSUB_MESSAGE_PUBLISHED",
    "STORAGE_EVENT_TYPES",
    "CloudEventMessage",
    "ConversionError",
    "Relay",
    "Route",
    "backoff_delay",
    "dead_letter_attributes",
    "example_events",
    "load_config",
    "pubsub_event",
    "rfc3339",
    "serve_front",
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
# What Pub/Sub adds to a message it forwards to a dead-letter topic.
DEAD_LETTER_ATTRIBUTES = (
    "CloudPubSubDeadLetterSourceDeliveryCount", "CloudPubSubDeadLetterSourceSubscription",
    "CloudPubSubDeadLetterSourceSubscriptionProject", "CloudPubSubDeadLetterSourceTopicPublishTime",
)

DEFAULT_MAX_IN_FLIGHT = 4  # POSTs at once to URL routes (a function's instances bound its own)
DEFAULT_TIMEOUT_SECONDS = 600.0  # a URL route's answer; a function's call ends at its own timeout
DEFAULT_MIN_BACKOFF_SECONDS = 0.5  # Eventarc: 10 s .. 600 s; shorter here so local retries are seen
DEFAULT_MAX_BACKOFF_SECONDS = 30.0
DEFAULT_MAX_DELIVERY_ATTEMPTS = 10  # infra/terraform: var.dead_letter_max_delivery_attempts
CALL_GRACE_SECONDS = 30.0  # a call's HTTP timeout over the function's: the watchdog ends it first
SUBSCRIPTION_WAIT_SECONDS = 150.0  # the stack creates the subscriptions once Pub/Sub answers (up to 60 s+)
MAX_OUTSTANDING_MESSAGES = 100  # leased at once per subscription, including those waiting to be retried
RECENT_DELIVERIES = 200  # kept for the health endpoint
# Headers that describe one connection, not the message: never forwarded by the fronts.
_OUTPUT_LOCK = threading.Lock()  # one JSON line at a time on stdout, whoever writes it
_RECORD_LOCK = threading.Lock()  # one writer of the instances file at a time
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})


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


def dead_letter_attributes(message: Any, subscription: str, attempts: int) -> dict[str, str]:
    """The message's attributes plus those Pub/Sub adds when it forwards it to a dead-letter topic."""
    project = subscription.split("/")[1] if subscription.startswith("projects/") else ""
    added = (str(attempts), subscription.rsplit("/", 1)[-1], project, rfc3339(message.publish_time))
    return {**dict(message.attributes), **dict(zip(DEAD_LETTER_ATTRIBUTES, added, strict=True))}


# -- the relay (I/O) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Messages of `subscription` (a full path) become `kind` CloudEvents POSTed to `url`, or to a free
    instance of the hosted `function`."""

    kind: Literal["storage", "pubsub"]
    subscription: str
    url: str = ""
    topic: str = ""  # for `pubsub`: the subscription's topic, looked up at start when empty
    function: str = ""
    trigger: str = ""  # what the route stands for: "storage", or the topic's settings key
    dead_letter_topic: str = ""  # full path; empty: retried for ever, never dead-lettered

    @property
    def name(self) -> str:
        """The function it feeds, else the subscription's id."""
        return self.function or self.subscription.rsplit("/", 1)[-1]

    def answers_to(self, trigger: str) -> bool:
        return trigger in (self.name, self.trigger, self.subscription)


@dataclass
class _RouteStats:
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    dropped_on_request: int = 0
    drops_pending: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


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


@dataclass(frozen=True)
class _Attempt:
    """One POST of a delivery: the answer's status (None: no answer) and where it went."""

    status: int | None
    ms: int
    error: str = ""
    instance: int | None = None
    timed_out: bool = False


class Relay:
    """Streaming-pulls each route's subscription and delivers its messages (see the module docstring).

    `functions` are the hosted functions' pools, by name (`start` starts them, `stop` stops them);
    `publisher` publishes dead letters (default: a Pub/Sub client built at the first one).
    """

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        functions: Mapping[str, InstancePool] | None = None,
        urls: Mapping[str, str] | None = None,
        subscriber: Any = None,
        publisher: Any = None,
        http: httpx.Client | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        min_backoff: float = DEFAULT_MIN_BACKOFF_SECONDS,
        max_backoff: float = DEFAULT_MAX_BACKOFF_SECONDS,
        max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
        out: Any = None,
        subscription_wait: float = SUBSCRIPTION_WAIT_SECONDS,
    ):
        self._functions = dict(functions or {})
        for route in routes:
            if bool(route.url) == bool(route.function):
                raise ValueError(f"route {route.name}: give a URL or a function, not both or neither")
            if route.function and route.function not in self._functions:
                raise ValueError(f"route {route.name}: no function {route.function!r} is hosted")
        if max_delivery_attempts < 0:
            raise ValueError("max_delivery_attempts must be 0 (never dead-letter) or more")
        self._routes = list(routes)
        self._urls = dict(urls or {})  # a function's public URL (its front), shown as a delivery's target
        self._subscription_wait = subscription_wait
        self._subscriber = subscriber
        self._publisher = publisher
        self._http = http or httpx.Client(timeout=timeout, trust_env=False)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_delivery_attempts
        self._out = out or sys.stdout
        self._attempts: dict[tuple[str, str], int] = {}
        self._waiting: dict[threading.Timer, Any] = {}  # retry timer -> its message
        self._futures: list[Any] = []
        self._stats = _Stats()
        self._route_stats = {route.subscription: _RouteStats() for route in self._routes}
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._cutoff: datetime | None = None  # messages published until then are dropped (`drain`)

    # lifecycle

    def start(self) -> None:
        """Start the functions' instances (all at once) while checking every subscription exists (and
        learning the Pub/Sub routes' topics); then start pulling. Raises `StartupError` if an instance does
        not come up."""
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

        with ThreadPoolExecutor(max_workers=len(self._functions) + 1, thread_name_prefix="relay-start") as pool:
            started = [pool.submit(function.start) for function in self._functions.values()]
            if self._subscriber is None:
                self._subscriber = pubsub_v1.SubscriberClient()
            self._routes = [self._resolve(route) for route in self._routes]
            for future in started:
                future.result()
        if self._stopping.is_set():
            return
        for route in self._routes:
            workers = self._workers(route)
            executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"relay-{route.name}")
            future = self._subscriber.subscribe(
                route.subscription,
                callback=lambda message, route=route: self._deliver(route, message),
                flow_control=pubsub_v1.types.FlowControl(max_messages=MAX_OUTSTANDING_MESSAGES),
                scheduler=ThreadScheduler(executor=executor),
            )
            self._futures.append(future)
        self._ready.set()

    def _workers(self, route: Route) -> int:
        """Deliveries of a route under way at once: as many as its function's instances can take."""
        if not route.function:
            return self._max_in_flight
        function = self._functions[route.function]
        return len(function.instances) * function.concurrency

    def _resolve(self, route: Route) -> Route:
        found = self._await_subscription(route.subscription)
        if route.kind == "pubsub" and not route.topic:
            return dataclasses.replace(route, topic=found.topic)
        return route

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

    def ready(self) -> bool:
        """True once every instance has answered and every subscription is pulled (an instance restarted
        later, after a timeout, does not make the relay unready: its function just has one fewer for a while)."""
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; messages waiting for a retry are nacked now, so the next relay gets them at once;
        the functions' instances are stopped."""
        self._stopping.set()
        with self._stats.lock:
            waiting = self._take_waiting()
        for message in waiting:
            message.nack()
        for future in self._futures:
            future.cancel()
        closing = [threading.Thread(target=function.close, daemon=True) for function in self._functions.values()]
        for thread in closing:
            thread.start()
        for future in self._futures:
            with contextlib.suppress(Exception):  # a cancelled stream may end with one: expected
                future.result(timeout=timeout)
        for thread in closing:
            thread.join()
        self._http.close()

    def state(self) -> dict[str, Any]:
        """Counters, per route and per function, and the most recent deliveries (the health endpoint)."""
        functions = {name: {"url": self._urls.get(name, ""), **pool.state(), "dead_lettered": 0}
                     for name, pool in self._functions.items()}
        with self._stats.lock:
            routes = []
            for route in self._routes:
                counters = self._route_stats[route.subscription].to_dict()
                routes.append({"name": route.name, "kind": route.kind, "trigger": route.trigger,
                               "subscription": route.subscription, "url": self._target(route),
                               "function": route.function, "dead_letter_topic": route.dead_letter_topic, **counters})
                if route.function:
                    functions[route.function]["dead_lettered"] += counters["dead_lettered"]
            return {
                "ok": not any(future.done() for future in self._futures),
                "ready": self._ready.is_set(),
                "max_delivery_attempts": self._max_attempts,
                "routes": routes,
                "functions": functions,
                "in_flight": self._stats.in_flight,
                "waiting_retry": self._stats.waiting_retry,
                "acked": self._stats.acked,
                "nacked": self._stats.nacked,
                "dropped": self._stats.dropped,
                "drained": self._stats.drained,
                "dead_lettered": sum(r["dead_lettered"] for r in routes),
                "dropped_on_request": sum(r["dropped_on_request"] for r in routes),
                "recent": list(self._stats.recent),
            }

    def _target(self, route: Route) -> str:
        return route.url or self._urls.get(route.function, f"function:{route.function}")

    # controls

    def drain(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Forget every message published until now (acked, never posted), as a subscription seek to now
        would: those waiting for a retry at once, those still queued or redelivered when they come; drops
        asked for are cancelled. Returns the state; deliveries already posted finish (wait for `in_flight`
        to reach 0)."""
        with self._stats.lock:
            self._cutoff = datetime.now(UTC)
            waiting = self._take_waiting()
            self._stats.drained += len(waiting)
            self._attempts.clear()
            for counters in self._route_stats.values():
                counters.drops_pending = 0
        for message in waiting:
            message.ack()
        return self.state()

    def drop(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`{"trigger": T, "count": N}`: ack the next N messages of the routes T names without delivering
        them (lost events); N = 0 cancels. Raises ValueError for an unknown route or a bad count."""
        trigger, count = params.get("trigger"), params.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"count must be a whole number, 0 or more, not {count!r}")
        routes = [route for route in self._routes if isinstance(trigger, str) and route.answers_to(trigger)]
        if not routes:
            known = sorted({name for r in self._routes for name in (r.name, r.trigger) if name})
            raise ValueError(f"no route {trigger!r}; known: {', '.join(known)}")
        with self._stats.lock:
            for route in routes:
                self._route_stats[route.subscription].drops_pending = count
        self.log({"severity": "INFO", "message": "drop requested", "routes": [r.name for r in routes],
                  "count": count})
        return self.state()

    def reset_stats(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Zero the per-function and per-route counters (invocations, longest, timeouts, dead letters...)."""
        for function in self._functions.values():
            function.reset_counters()
        with self._stats.lock:
            for subscription, counters in self._route_stats.items():
                self._route_stats[subscription] = _RouteStats(drops_pending=counters.drops_pending)
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

    # one delivery

    def _deliver(self, route: Route, message: Any) -> None:
        """The subscriber's callback: every message ends acked, or nacked (now or after a backoff)."""
        try:
            self._deliver_once(route, message)
        except Exception as exc:  # noqa: BLE001 - a bug here must not strand the message's lease
            self.log({"severity": "ERROR", "message": "relay error, message nacked", "id": message.message_id,
                      "error": f"{type(exc).__name__}: {exc}"})
            self._nack_later(message, self._max_backoff)  # never a hot redelivery loop

    def _drained(self, message: Any) -> bool:
        """True (and the message acked) when it was published before the last `drain`."""
        with self._stats.lock:
            if self._cutoff is None or message.publish_time > self._cutoff:
                return False
            self._stats.drained += 1
        message.ack()
        return True

    def _dropped_on_request(self, route: Route, message: Any) -> bool:
        """True (and the message acked unseen) when a drop of this route is pending."""
        with self._stats.lock:
            counters = self._route_stats[route.subscription]
            if counters.drops_pending == 0:
                return False
            counters.drops_pending -= 1
            counters.dropped_on_request += 1
            entry = {"id": message.message_id, "target": self._target(route), "outcome": "dropped"}
            if route.kind == "storage" and message.attributes.get("objectId"):
                entry["subject"] = f"objects/{message.attributes['objectId']}"
            self._stats.recent.append(entry)
        message.ack()
        self.log({"severity": "WARNING", "message": "dropped on request", "route": route.name, **entry})
        return True

    def _deliver_once(self, route: Route, message: Any) -> None:
        if self._drained(message) or self._dropped_on_request(route, message):
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
            self._stats.in_flight += 1
        try:
            sent = self._post(route, event, message)
        finally:
            with self._stats.lock:
                self._stats.in_flight -= 1
        if sent is None:  # drained while it waited for an instance
            return
        entry: dict[str, Any] = {"id": message.message_id, "type": event.attributes["type"]}
        if "subject" in event.attributes:
            entry["subject"] = event.attributes["subject"]
        entry.update(target=self._target(route), status=sent.status, ms=sent.ms, attempt=attempt)
        if route.function:
            entry.update(function=route.function, instance=sent.instance)
        if sent.error:
            entry["error"] = sent.error
        if sent.status is not None and 200 <= sent.status < 300:
            self._settle(route, message, key, {**entry, "outcome": "ack"}, "delivered")
            message.ack()
            return
        if route.dead_letter_topic and self._max_attempts and attempt >= self._max_attempts:
            self._dead_letter(route, message, key, entry, attempt)
            return
        delay = backoff_delay(attempt, self._min_backoff, self._max_backoff)
        entry.update(outcome="nack", retry_in_s=delay)
        with self._stats.lock:
            self._stats.nacked += 1
            self._route_stats[route.subscription].failed += 1
            self._stats.recent.append(entry)
        self.log({"severity": "WARNING", "message": "delivery failed, retrying", **entry})
        self._nack_later(message, delay)

    def _settle(self, route: Route, message: Any, key: tuple[str, str], entry: dict[str, Any], counter: str) -> None:
        """Count a message that ends here (delivered or dead-lettered) and log it; the caller acks it."""
        with self._stats.lock:
            self._attempts.pop(key, None)
            self._stats.acked += 1
            setattr(self._route_stats[route.subscription], counter,
                    getattr(self._route_stats[route.subscription], counter) + 1)
            self._stats.recent.append(entry)
        severity = "INFO" if entry["outcome"] == "ack" else "ERROR"
        self.log({"severity": severity, "message": counter.replace("_", "-"), **entry})

    def _post(self, route: Route, event: CloudEventMessage, message: Any) -> _Attempt | None:
        """POST the event to the route's URL, or to a free instance of its function (None: the message was
        drained while it waited for a slot or an instance)."""
        headers, body = event.http()
        if not route.function:
            with self._slots:
                if self._drained(message):
                    return None
                return _call(lambda: self._http.post(route.url, headers=headers, content=body).status_code)
        function = self._functions[route.function]
        try:
            with function.instance() as instance:
                if self._drained(message):
                    return None
                invocation = function.invoke(instance, lambda base: self._http.post(
                    base, headers=headers, content=body, timeout=function.timeout + CALL_GRACE_SECONDS).status_code)
        except PoolClosed as exc:
            return _Attempt(None, 0, str(exc))
        return _from_invocation(invocation, function.timeout)

    def _dead_letter(self, route: Route, message: Any, key: tuple[str, str], entry: dict[str, Any],
                     attempt: int) -> None:
        """Publish the message to the route's dead-letter topic and ack it; if that fails, retry later."""
        attributes = dead_letter_attributes(message, route.subscription, attempt)
        try:
            publisher = self._dead_letter_publisher()
            publisher.publish(route.dead_letter_topic, message.data, **attributes).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - kept and retried, as Pub/Sub would
            self.log({"severity": "ERROR", "message": "dead letter not published, retrying", **entry,
                      "dead_letter_topic": route.dead_letter_topic, "error": f"{type(exc).__name__}: {exc}"})
            self._nack_later(message, self._max_backoff)
            return
        self._settle(route, message, key, {**entry, "outcome": "dead-lettered",
                                           "dead_letter_topic": route.dead_letter_topic}, "dead_lettered")
        message.ack()

    def _dead_letter_publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

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
        _log_line(entry, self._out)


def _log_line(entry: dict[str, Any], out: Any = None) -> None:
    entry = {"time": rfc3339(datetime.now(UTC)), "logger": "relay", **entry}
    line = json.dumps(entry, ensure_ascii=False, default=str)
    with _OUTPUT_LOCK:
        print(line, file=out or sys.stdout, flush=True)


def _call(post: Any) -> _Attempt:
    """Time one POST to a URL route."""
    started = time.monotonic()
    try:
        status, error = post(), ""
    except httpx.HTTPError as exc:
        status, error = None, f"{type(exc).__name__}: {exc}"
    return _Attempt(status, round((time.monotonic() - started) * 1000), error)


def _from_invocation(invocation: Invocation, timeout: float) -> _Attempt:
    error = ""
    if invocation.timed_out:
        error = f"timed out after {timeout:g}s: the instance was killed and is restarted"
    elif invocation.error is not None:
        error = f"{type(invocation.error).__name__}: {invocation.error}"
    status = None if invocation.timed_out else invocation.value
    return _Attempt(status, round(invocation.seconds * 1000), error, invocation.instance, invocation.timed_out)


# -- the functions' fronts ------------------------------------------------------------------------------


def serve_front(host: str, port: int, pool: InstancePool, client: httpx.Client, log: Any) -> ThreadingHTTPServer:
    """Serve the function's URL: each request goes, as it came (less its hop-by-hop headers), to a free
    instance of `pool`, and its answer back. A call past the timeout answers 504 (its instance killed and
    restarted), an instance that failed 503. From a daemon thread; `shutdown()` stops it."""

    class Front(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._plain(411, "send a Content-Length: chunked request bodies are not relayed")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # http.server decodes header bytes as Latin-1: encoded back the same way, they pass on as sent.
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP]

            def send(base: str) -> tuple[int, list[tuple[str, str]], bytes]:
                with client.stream(self.command, base.rstrip("/") + self.path, headers=headers, content=body,
                                   timeout=pool.timeout + CALL_GRACE_SECONDS) as answer:
                    head = self.command == "HEAD"  # its Content-Length is the GET's: kept
                    kept = [(k, v) for k, v in answer.headers.multi_items()
                            if k.lower() not in HOP_BY_HOP or (head and k.lower() == "content-length")]
                    return answer.status_code, kept, b"".join(answer.iter_raw())

            try:
                with pool.instance() as instance:
                    invocation = pool.invoke(instance, send)
            except PoolClosed:
                self._plain(503, f"the function {pool.name} is stopping")
                return
            if invocation.timed_out:
                self._plain(504, f"the function {pool.name} timed out after {pool.timeout:g}s: its instance was "
                                 "killed and is restarted")
            elif invocation.error is not None:
                error = f"{type(invocation.error).__name__}: {invocation.error}"
                log({"severity": "ERROR", "message": "instance failed", "function": pool.name,
                     "instance": invocation.instance, "error": error})
                self._plain(503, f"the function {pool.name}'s instance failed: {type(invocation.error).__name__}")
            else:
                self._answer(*invocation.value)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_one  # noqa: N815

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _plain(self, status: int, text: str) -> None:
            self._answer(status, [("Content-Type", "text/plain; charset=utf-8")], text.encode())

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the relay logs what matters
            pass

    server = ThreadingHTTPServer((host, port), Front)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"front:{pool.name}", daemon=True).start()
    return server


# -- configuration ------------------------------------------------------------------------------------------


def load_config(path: Path, log: Any) -> tuple[list[Route], dict[str, InstancePool], dict[str, Any]]:
    """Routes and function pools from the JSON file `infra.local.stack` writes:
    `{"functions": [{"name", "host", "port", "argv" (with "{port}"), "env", "cwd", "logs", "health_path",
    "instances", "concurrency", "timeout_s"}], "routes": [{"kind", "subscription", "function" or "url",
    "trigger", "dead_letter_topic"}], "instances_file"}`; the pools record their instances' pids in
    `instances_file` (when given) as they start. Raises ValueError naming what is wrong."""
    pools: dict[str, InstancePool] = {}
    try:
        config = json.loads(path.read_text())
        record = Path(config["instances_file"]) if config.get("instances_file") else None
        on_change = (lambda: write_instances(record, pools)) if record else None
        for spec in config.get("functions", []):
            name, logs = spec["name"], Path(spec["logs"])
            pools[name] = InstancePool(
                name, spec["argv"], count=int(spec.get("instances", 1)), concurrency=int(spec.get("concurrency", 1)),
                timeout=float(spec["timeout_s"]), health_path=spec.get("health_path", "/"), env=spec.get("env", {}),
                cwd=Path(spec["cwd"]) if spec.get("cwd") else None, host=spec.get("host", "127.0.0.1"),
                log_path=lambda i, name=name, logs=logs: logs / (f"{name}.log" if i == 0 else f"{name}-{i}.log"),
                on_change=on_change, log=log)
        routes = [Route(r["kind"], r["subscription"], r.get("url", ""), r.get("topic", ""), r.get("function", ""),
                        r.get("trigger", ""), r.get("dead_letter_topic", "")) for r in config.get("routes", [])]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad relay config {path}: {type(exc).__name__}: {exc}") from exc
    return routes, pools, config


def write_instances(path: Path, pools: Mapping[str, InstancePool]) -> None:
    """Record every instance's pid (atomically), so whoever stops the stack can stop what a killed relay
    left behind."""
    with _RECORD_LOCK:
        records = {name: pool.records() for name, pool in pools.items()}
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(records, indent=2) + "\n")
        os.replace(temporary, path)


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


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def main(argv: Sequence[str] | None = None) -> int:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project")
    parser = argparse.ArgumentParser(prog="python -m infra.local.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="functions and routes (JSON, as infra.local.stack writes it)")
    parser.add_argument("--storage", action="append", default=[], type=_route_arg("storage", project),
                        metavar="SUBSCRIPTION=URL", help="Cloud Storage notifications -> storage CloudEvents")
    parser.add_argument("--pubsub", action="append", default=[], type=_route_arg("pubsub", project),
                        metavar="SUBSCRIPTION=URL", help="any message -> messagePublished CloudEvents")
    parser.add_argument("--host", default="127.0.0.1", help="health endpoint host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("RELAY_PORT", "0")),
                        help="health endpoint port (GET /health: counters and recent deliveries); 0: none")
    parser.add_argument("--max-in-flight", type=int, default=int(os.environ.get("RELAY_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)))
    parser.add_argument("--timeout", type=float, default=_env_number("RELAY_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
    parser.add_argument("--min-backoff", type=float, default=_env_number("RELAY_MIN_BACKOFF_SECONDS", DEFAULT_MIN_BACKOFF_SECONDS))
    parser.add_argument("--max-backoff", type=float, default=_env_number("RELAY_MAX_BACKOFF_SECONDS", DEFAULT_MAX_BACKOFF_SECONDS))
    parser.add_argument("--max-delivery-attempts", type=int,
                        default=int(os.environ.get("RELAY_MAX_DELIVERY_ATTEMPTS", DEFAULT_MAX_DELIVERY_ATTEMPTS)),
                        help="failed attempts before a message goes to its route's dead-letter topic; 0: never")
    parser.add_argument("--write-fixtures", type=Path, metavar="DIR", help="write the tests/events fixtures and exit")
    args = parser.parse_args(argv)

    if args.write_fixtures:
        for path in write_fixtures(args.write_fixtures):
            print(path)
        return 0
    if "PUBSUB_EMULATOR_HOST" not in os.environ:
        parser.error("PUBSUB_EMULATOR_HOST is not set: the relay only talks to the Pub/Sub emulator")
    log = _log_line
    routes, pools, config = [*args.storage, *args.pubsub], {}, {}
    if args.config:
        try:
            found, pools, config = load_config(args.config, log)
        except ValueError as exc:
            parser.error(str(exc))
        routes += found
    if not routes and not pools:
        parser.error("nothing to do: give --config, --storage and/or --pubsub")
    try:
        relay = Relay(routes, functions=pools, max_in_flight=args.max_in_flight, timeout=args.timeout,
                      min_backoff=args.min_backoff, max_backoff=args.max_backoff,
                      max_delivery_attempts=args.max_delivery_attempts,
                      urls={f["name"]: f"http://{f.get('host', '127.0.0.1')}:{f['port']}/"
                            for f in config.get("functions", [])})
    except ValueError as exc:
        parser.error(str(exc))
    return _serve(relay, args, config, pools, log)


def _serve(relay: Relay, args: argparse.Namespace, config: Mapping[str, Any], pools: Mapping[str, InstancePool],
           log: Any) -> int:
    """Run until SIGTERM/SIGINT (or a subscription stream ends); stop everything on the way out."""
    from infra.local.processes import StartupError, serve_json

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    servers = []
    failure: list[BaseException] = []

    def start() -> None:
        try:
            relay.start()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
            done.set()

    try:
        if args.port:
            servers.append(serve_json(args.host, args.port, relay.state, {
                "drain": relay.drain, "drop": relay.drop, "reset_stats": relay.reset_stats}, ready=relay.ready))
        http = httpx.Client(trust_env=False, follow_redirects=False)
        for spec in config.get("functions", []):
            host, port = spec.get("host", "127.0.0.1"), int(spec["port"])
            servers.append(serve_front(host, port, pools[spec["name"]], http, log))
        threading.Thread(target=start, name="relay-start", daemon=True).start()
        log({"severity": "INFO", "message": "relay starting", "functions": sorted(pools),
             "routes": [f"{r['kind']}:{r['subscription']} -> {r['url']}" for r in relay.state()["routes"]]})
        while not done.wait(1.0):
            if relay.ready() and not relay.state()["ok"]:
                log({"severity": "ERROR", "message": "a subscription stream ended; exiting"})
                return 1
        if failure:
            problem = failure[0]
            kind = "a function did not start" if isinstance(problem, StartupError) else type(problem).__name__
            log({"severity": "ERROR", "message": f"relay start failed: {kind}", "error": str(problem)})
            print(f"relay start failed: {problem}", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        stopping = [threading.Thread(target=server.shutdown, daemon=True) for server in servers]  # 0.5 s each
        for thread in stopping:
            thread.start()
        relay.stop()
        for thread in stopping:
            thread.join()


if __name__ == "__main__":
    sys.exit(main())
