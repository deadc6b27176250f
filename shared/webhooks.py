"""Batch webhooks from the Gemini API, verified as the Standard Webhooks specification signs them.

A delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature` ("v1,<base64>" entries,
space-separated: several while a secret is rotated). The signature is HMAC-SHA256, keyed by the base64
part of the `whsec_...` secret, over `id.timestamp.body`. A delivery is accepted only when one signature
matches (compared in constant time) and its timestamp is within `TOLERANCE_SECONDS` of now (a replayed old
delivery is refused). Nothing here logs or returns the secret or a signature.

The payload (partly documented: `type` and `data.output_file_uri` are confirmed, the batch id is read from
`data.id` or `data.name`, as `batches/ID` or a bare `ID`) names the batch; the pipeline then asks the API
for the batch itself, so nothing in the payload is trusted beyond which batch to look at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BATCH_EVENTS", "TOLERANCE_SECONDS", "WebhookRejected", "batch_of", "verify"]

TOLERANCE_SECONDS = 300
BATCH_EVENTS = frozenset({"batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"})


@dataclass(frozen=True)
class WebhookRejected(Exception):
    status: int
    reason: str


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected(500, "the configured signing secret is not whsec_<base64>") from None


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
    """The delivery's JSON payload, once its signature and age are checked; `WebhookRejected` otherwise."""
    if not secret:
        raise WebhookRejected(503, "no signing secret is configured: webhooks are refused")
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (message_id and timestamp and signatures):
        raise WebhookRejected(401, "missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookRejected(401, "webhook-timestamp is not a number") from None
    if abs(now - sent) > TOLERANCE_SECONDS:
        raise WebhookRejected(401, "the delivery is too old or from the future")
    expected = base64.b64encode(hmac.new(_key(secret), f"{message_id}.{timestamp}.".encode() + body,
                                         hashlib.sha256).digest())
    offered = [s.split(",", 1)[1].encode() for s in signatures.split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise WebhookRejected(401, "no valid signature")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookRejected(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "the body is not a JSON object")
    return payload


def batch_of(payload: Mapping[str, Any]) -> str | None:
    """The batch a verified batch event is about (`batches/ID`), or None for any other event."""
    if payload.get("type") not in BATCH_EVENTS:
        return None
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    name = data.get("id") or data.get("name") or data.get("batch")
    if not isinstance(name, str) or not name.strip("/"):
        return None
    name = name.strip("/")
    return name if name.startswith("batches/") else f"batches/{name.rsplit('/', 1)[-1]}"
