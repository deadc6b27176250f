"""Gemini API webhooks (beta): static, project-level webhooks, and the signed deliveries of batch events.

Resources are snake_case JSON, as google-genai's `client.webhooks` (generated from the API's OpenAPI
spec) sends and reads them; lowerCamelCase is accepted too. A webhook: `id` (36 lowercase letters and
digits), `name` (optional, the user's), `uri`, `subscribed_events`, `state` ("enabled" | "disabled"),
`signing_secrets` ([{truncated_secret, expire_time?}]); `new_signing_secret` only in the create answer.

Deliveries follow the Standard Webhooks spec: POST to the uri with `webhook-id` (the same on every
retry), `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature` ("v1,<base64
HMAC-SHA256 of id.timestamp.body>", keyed by the base64 part of `whsec_<base64>`; one entry per live
secret, space-separated, while a rotated secret is still valid). A 2xx is a delivery; anything else, or
no answer within the timeout, is retried with exponential backoff until `retry_seconds` after the event
(24 h by default, as the live API), then dropped. Secrets are never logged.

Batch events: a batch ending SUCCEEDED, FAILED, EXPIRED or CANCELLED emits batch.succeeded,
batch.failed, batch.expired or batch.cancelled. Payload (thin; see README, Fidelity, for what is and is
not confirmed): {"type", "timestamp", "data": {"id": "batches/ID", "output_file_uri"?: "files/ID",
"error_code"?, "error_message"?}}.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import hmac
import itertools
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .store import Batch, State
from .wire import ApiError, check_fields, dumps, loads, new_id, page_token, parse_page_token, rfc3339

__all__ = [
    "BATCH_EVENTS",
    "KNOWN_EVENTS",
    "Dispatcher",
    "WebhookConfigError",
    "WebhookRegistry",
    "batch_event",
    "sign",
]

log = logging.getLogger("gemini_emulator")

BATCH_EVENTS = {
    State.SUCCEEDED: "batch.succeeded",
    State.FAILED: "batch.failed",
    State.EXPIRED: "batch.expired",
    State.CANCELLED: "batch.cancelled",
}
KNOWN_EVENTS = frozenset(
    {
        *BATCH_EVENTS.values(),
        "interaction.requires_action",
        "interaction.completed",
        "interaction.failed",
        "interaction.cancelled",
        "video.generated",
    }
)
STATES = ("enabled", "disabled")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
ROTATION_OVERLAP_SECONDS = 24 * 3600.0
_REVOCATIONS = ("revoke_previous_secrets_after_h24", "revoke_previous_secrets_immediately")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SECRET_ALPHABET = string.ascii_lowercase + string.digits


class WebhookConfigError(ValueError):
    """GEMINI_EMULATOR_WEBHOOKS cannot be applied; the message names the entry and what was wrong."""


# -- secrets and signatures ------------------------------------------------------------------------------
def new_secret() -> str:
    """`whsec_` + base64 of 32 random lowercase letters and digits (the shape live secrets have)."""
    raw = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(32))
    return "whsec_" + base64.b64encode(raw.encode()).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError if it is not one (24 to 64 bytes)."""
    if not secret.startswith("whsec_"):
        raise ValueError("a signing secret starts with whsec_")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a signing secret is whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a signing secret's key is 24 to 64 bytes, this one has {len(key)}")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# -- resources ---------------------------------------------------------------------------------------------
@dataclass
class SigningSecret:
    value: str
    expire_time: float | None = None

    def live(self, now: float) -> bool:
        return self.expire_time is None or self.expire_time > now

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {"truncated_secret": f"whsec_...{self.value[-4:]}"}
        if self.expire_time is not None:
            out["expire_time"] = rfc3339(self.expire_time)
        return out


@dataclass
class Webhook:
    id: str
    uri: str
    events: list[str]
    secrets: list[SigningSecret]  # newest first
    name: str | None = None
    state: str = "enabled"
    seq: int = 0
    from_env: bool = False

    def live_secrets(self, now: float) -> list[str]:
        return [s.value for s in self.secrets if s.live(now)]

    def resource(self, new_signing_secret: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.name:
            out["name"] = self.name
        out["uri"] = self.uri
        out["subscribed_events"] = list(self.events)
        if new_signing_secret is not None:
            out["new_signing_secret"] = new_signing_secret
        now = time.time()
        out["signing_secrets"] = [s.resource() for s in self.secrets if s.live(now)]
        out["state"] = self.state
        return out


def _uri(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(400, f"uri must be an absolute http(s) URL, got {value!r}.")
    return value


def _events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "subscribed_events must be a non-empty list of event names.")
    unknown = [e for e in value if e not in KNOWN_EVENTS]
    if unknown:
        raise ApiError(400, f"subscribed_events: unknown events {unknown}; known: {sorted(KNOWN_EVENTS)}.")
    return list(dict.fromkeys(value))


def _name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"name must be a string, got {value!r}.")
    return value or None


def _get(body: Mapping[str, Any], snake: str) -> Any:
    """A field sent in snake_case (as google-genai does) or lowerCamelCase."""
    if snake in body:
        return body[snake]
    head, *rest = snake.split("_")
    return body.get(head + "".join(w.title() for w in rest))


class WebhookRegistry:
    """The project's webhooks; thread-safe. Those from GEMINI_EMULATOR_WEBHOOKS come back on reset."""

    def __init__(self, config: str | None = None) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[str, Webhook] = {}
        self._seq = itertools.count(1)
        self._configured = self._parse_config(config)
        self.reset()

    # -- configuration at start -----------------------------------------------------------------------
    def _parse_config(self, config: str | None) -> list[Webhook]:
        if not config or not config.strip():
            return []
        try:
            entries = loads(config)
        except ApiError as exc:
            raise WebhookConfigError(f"GEMINI_EMULATOR_WEBHOOKS is not valid JSON: {exc.message}") from exc
        entries = [entries] if isinstance(entries, Mapping) else entries
        if not isinstance(entries, list):
            raise WebhookConfigError("GEMINI_EMULATOR_WEBHOOKS is a JSON object or a list of them")
        hooks = []
        for i, entry in enumerate(entries):
            where = f"GEMINI_EMULATOR_WEBHOOKS[{i}]"
            try:
                entry = check_fields(entry, {"id", "name", "uri", "subscribedEvents", "signingSecret"}, where)
                secret = _get(entry, "signing_secret")
                if not isinstance(secret, str):
                    raise ApiError(
                        400, "signing_secret (whsec_<base64>) is required: the receiver must know it"
                    )
                secret_key(secret)
                hook_id = entry.get("id") or new_id(36)
                if not isinstance(hook_id, str) or not _ID_RE.match(hook_id):
                    raise ApiError(400, f"id must be lowercase letters, digits and dashes, got {hook_id!r}")
                hooks.append(
                    Webhook(
                        id=hook_id,
                        uri=_uri(entry.get("uri")),
                        events=_events(_get(entry, "subscribed_events")),
                        secrets=[SigningSecret(secret)],
                        name=_name(entry.get("name")),
                        from_env=True,
                    )
                )
            except ApiError as exc:
                raise WebhookConfigError(f"{where}: {exc.message}") from None
            except ValueError as exc:
                raise WebhookConfigError(f"{where}: signing_secret: {exc}") from None
        return hooks

    def reset(self) -> None:
        """Only the webhooks configured at start remain, with their configured secrets."""
        with self._lock:
            self._hooks = {}
            for hook in self._configured:
                self._hooks[hook.id] = dataclasses.replace(
                    hook,
                    events=list(hook.events),
                    secrets=[SigningSecret(hook.secrets[0].value)],
                    seq=next(self._seq),
                )

    # -- the API ------------------------------------------------------------------------------------------
    def create(self, body: Any, webhook_id: str | None = None) -> dict[str, Any]:
        body = check_fields(body, {"name", "uri", "subscribedEvents"}, "webhook")
        if webhook_id is not None and not _ID_RE.match(webhook_id):
            raise ApiError(
                400, f"webhook_id must be lowercase letters, digits and dashes, got {webhook_id!r}."
            )
        secret = new_secret()
        hook = Webhook(
            id=webhook_id or new_id(36),
            uri=_uri(body.get("uri")),
            events=_events(_get(body, "subscribed_events")),
            secrets=[SigningSecret(secret)],
            name=_name(body.get("name")),
        )
        with self._lock:
            if hook.id in self._hooks:
                raise ApiError(409, f"Webhook {hook.id} already exists.", status="ALREADY_EXISTS")
            hook.seq = next(self._seq)
            self._hooks[hook.id] = hook
            return hook.resource(new_signing_secret=secret)

    def _find(self, hook_id: str) -> Webhook:
        hook = self._hooks.get(hook_id.removeprefix("webhooks/"))
        if hook is None:
            raise ApiError(404, "Requested entity was not found.")
        return hook

    def get(self, hook_id: str) -> dict[str, Any]:
        with self._lock:
            return self._find(hook_id).resource()

    def list(self, page_size: int | None, token: str | None) -> dict[str, Any]:
        if page_size is not None and page_size < 0:
            raise ApiError(400, f"page_size must not be negative, got {page_size}.")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = parse_page_token(token, "webhooks") if token else 0
        with self._lock:
            hooks = sorted((h for h in self._hooks.values() if h.seq > after), key=lambda h: h.seq)
            out: dict[str, Any] = {}
            if hooks:
                out["webhooks"] = [h.resource() for h in hooks[:size]]
            if len(hooks) > size:
                out["next_page_token"] = page_token(hooks[size - 1].seq, kind="webhooks")
            return out

    def update(self, hook_id: str, body: Any, update_mask: str | None) -> dict[str, Any]:
        body = check_fields(body, {"name", "uri", "subscribedEvents", "state"}, "webhook")
        if update_mask:
            paths = {_snake(p.strip()) for p in update_mask.split(",") if p.strip()}
        else:
            paths = {_snake(k) for k in body}
        unknown = paths - {"name", "uri", "subscribed_events", "state"}
        if unknown:
            raise ApiError(400, f"update_mask: fields {sorted(unknown)} cannot be updated.")
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = _name(body.get("name"))
        if "uri" in paths:
            values["uri"] = _uri(body.get("uri"))
        if "subscribed_events" in paths:
            values["events"] = _events(_get(body, "subscribed_events"))
        if "state" in paths:
            if body.get("state") not in STATES:
                raise ApiError(400, f"state must be one of {list(STATES)}, got {body.get('state')!r}.")
            values["state"] = body["state"]
        with self._lock:
            hook = self._find(hook_id)
            for key, value in values.items():
                setattr(hook, key, value)
            return hook.resource()

    def delete(self, hook_id: str) -> None:
        with self._lock:
            del self._hooks[self._find(hook_id).id]

    def rotate(self, hook_id: str, body: Any) -> dict[str, Any]:
        body = check_fields(body, {"revocationBehavior"}, "")
        behavior = _get(body, "revocation_behavior") or _REVOCATIONS[0]
        if behavior not in _REVOCATIONS:
            raise ApiError(400, f"revocation_behavior must be one of {list(_REVOCATIONS)}, got {behavior!r}.")
        secret = new_secret()
        now = time.time()
        with self._lock:
            hook = self._find(hook_id)
            kept = [] if behavior == _REVOCATIONS[1] else [s for s in hook.secrets if s.live(now)]
            for old in kept:
                old.expire_time = min(old.expire_time or float("inf"), now + ROTATION_OVERLAP_SECONDS)
            hook.secrets = [SigningSecret(secret), *kept]
        return {"secret": secret}

    # -- deliveries -----------------------------------------------------------------------------------------
    def subscribers(self, event: str) -> list[str]:
        with self._lock:
            return [h.id for h in self._hooks.values() if h.state == "enabled" and event in h.events]

    def target(self, hook_id: str) -> tuple[str, list[str]] | None:
        """(uri, live secrets) of an enabled webhook; None once it is deleted or disabled."""
        with self._lock:
            hook = self._hooks.get(hook_id)
            if hook is None or hook.state != "enabled":
                return None
            return hook.uri, hook.live_secrets(time.time())


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def batch_event(batch: Batch) -> tuple[str, dict[str, Any]] | None:
    """(event type, payload) for a batch that has just ended; None for a state with no event."""
    event = BATCH_EVENTS.get(batch.state)
    if event is None:
        return None
    data: dict[str, Any] = {"id": batch.name}
    if batch.state == State.SUCCEEDED and batch.responses_file:
        data["output_file_uri"] = batch.responses_file
    if batch.state == State.FAILED and batch.error:
        data["error_code"] = batch.error.get("code")
        data["error_message"] = batch.error.get("message")
    return event, {"type": event, "timestamp": rfc3339(batch.end_time or time.time()), "data": data}


# -- delivery ------------------------------------------------------------------------------------------------
@dataclass
class Delivery:
    hook_id: str
    event: str
    msg_id: str
    body: bytes
    created: float = field(default_factory=time.time)
    attempts: int = 0


class Dispatcher:
    """Sends deliveries on background threads; each failure is retried after backoff * 2**(attempt - 1)
    seconds (at most `max_backoff`) while the event is younger than `retry_seconds`."""

    def __init__(
        self,
        registry: WebhookRegistry,
        retry_seconds: float = 24 * 3600.0,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        max_backoff: float = 600.0,
        threads: int = 2,
    ) -> None:
        self.registry = registry
        self.retry_seconds, self.backoff_seconds = retry_seconds, backoff_seconds
        self.timeout_seconds, self.max_backoff = timeout_seconds, max_backoff
        self._queue: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"emulator-webhooks-{i}", daemon=True)
            for i in range(threads)
        ]
        self._counts = {"delivered": 0, "failedAttempts": 0, "abandoned": 0}
        self._in_flight = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0.0))

    def publish(self, event: str, payload: dict[str, Any]) -> int:
        """Queue one delivery of `payload` per enabled webhook subscribed to `event`; how many."""
        body = dumps(payload)
        hooks = self.registry.subscribers(event)
        for hook_id in hooks:
            self._schedule(Delivery(hook_id, event, f"msg_{new_id(27)}", body), time.time())
        return len(hooks)

    def batch_ended(self, batch: Batch) -> None:
        made = batch_event(batch)
        if made is not None:
            self.publish(*made)

    def stats(self) -> dict[str, int]:
        with self._wake:
            return {"queued": len(self._queue), "inFlight": self._in_flight, **self._counts}

    def _schedule(self, delivery: Delivery, due: float) -> None:
        with self._wake:
            heapq.heappush(self._queue, (due, next(self._order), delivery))
            self._wake.notify()

    def _next(self) -> Delivery | None:
        with self._wake:
            while not self._stopping.is_set():
                now = time.time()
                if self._queue and self._queue[0][0] <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._queue)[2]
                self._wake.wait(min(self._queue[0][0] - now, 1.0) if self._queue else 1.0)
            return None

    def _loop(self) -> None:
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            while (delivery := self._next()) is not None:
                try:
                    self._attempt(client, delivery)
                finally:
                    with self._wake:
                        self._in_flight -= 1

    def _attempt(self, client: httpx.Client, delivery: Delivery) -> None:
        target = self.registry.target(delivery.hook_id)
        if target is None:  # deleted or disabled since: nothing to deliver to
            return
        uri, live = target
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(s, delivery.msg_id, timestamp, delivery.body) for s in live),
        }
        try:
            answer = client.post(uri, content=delivery.body, headers=headers, timeout=self.timeout_seconds)
            outcome: int | str = answer.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self._counted("delivered")
            log.info("webhook %s delivered to %s (%s)", delivery.event, _where(uri), delivery.msg_id)
            return
        delivery.attempts += 1
        self._counted("failedAttempts")
        delay = min(self.backoff_seconds * 2 ** (delivery.attempts - 1), self.max_backoff)
        if time.time() + delay - delivery.created > self.retry_seconds:
            self._counted("abandoned")
            log.warning(
                "webhook %s to %s dropped after %d attempts (last: %s)",
                delivery.event,
                _where(uri),
                delivery.attempts,
                outcome,
            )
            return
        log.info(
            "webhook %s to %s failed (%s); retry %d in %.2fs",
            delivery.event,
            _where(uri),
            outcome,
            delivery.attempts,
            delay,
        )
        self._schedule(delivery, time.time() + delay)

    def _counted(self, key: str) -> None:
        with self._wake:
            self._counts[key] += 1

    def reset(self) -> None:
        """Queued deliveries dropped, counters zeroed."""
        with self._wake:
            self._queue.clear()
            self._counts = dict.fromkeys(self._counts, 0)


def _where(uri: str) -> str:
    """A uri for the log: scheme, host and path (a query string may carry a credential)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
