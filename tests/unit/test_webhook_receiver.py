"""Batch webhooks: Standard Webhooks signatures verified, old or forged deliveries refused, the batch named."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from shared.webhooks import WebhookRejected, batch_of, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NOW = 1_800_000_000


def signed(body: bytes, *, secret: str = SECRET, at: int = NOW, message_id: str = "msg_1") -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{message_id}.{at}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": message_id, "webhook-timestamp": str(at), "webhook-signature": f"v1,{signature}"}


BODY = json.dumps({"type": "batch.succeeded", "data": {"id": "batches/abc", "output_file_uri": "files/x"}}).encode()


def test_a_signed_delivery_is_read_and_names_its_batch():
    payload = verify(SECRET, signed(BODY), BODY, NOW + 10)
    assert batch_of(payload) == "batches/abc"


def test_any_of_several_signatures_may_match_while_a_secret_rotates():
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    headers = signed(BODY)
    headers["webhook-signature"] = f"{signed(BODY, secret=other)['webhook-signature']} {headers['webhook-signature']}"
    assert verify(SECRET, headers, BODY, NOW)["type"] == "batch.succeeded"


@pytest.mark.parametrize(("headers", "body", "now", "reason"), [
    (signed(BODY, secret="whsec_" + base64.b64encode(b"z" * 32).decode()), BODY, NOW, "no valid signature"),
    (signed(BODY), BODY.replace(b"abc", b"abd"), NOW, "no valid signature"),
    (signed(BODY), BODY, NOW + 301, "too old"),
    (signed(BODY), BODY, NOW - 301, "future"),
    ({"webhook-id": "m"}, BODY, NOW, "missing"),
    ({**signed(BODY), "webhook-timestamp": "soon"}, BODY, NOW, "not a number"),
])
def test_forged_altered_replayed_or_incomplete_deliveries_are_refused(headers, body, now, reason):
    with pytest.raises(WebhookRejected) as refused:
        verify(SECRET, headers, body, now)
    assert refused.value.status == 401 and reason in refused.value.reason
    assert SECRET not in refused.value.reason


def test_without_a_secret_every_delivery_is_refused():
    with pytest.raises(WebhookRejected) as refused:
        verify("", signed(BODY), BODY, NOW)
    assert refused.value.status == 503


@pytest.mark.parametrize(("payload", "batch"), [
    ({"type": "batch.failed", "data": {"id": "xyz"}}, "batches/xyz"),
    ({"type": "batch.expired", "data": {"name": "batches/xyz"}}, "batches/xyz"),
    ({"type": "batch.succeeded", "data": {}}, None),
    ({"type": "video.generated", "data": {"id": "xyz"}}, None),
    ({"data": "nope"}, None),
])
def test_only_batch_events_name_a_batch(payload, batch):
    assert batch_of(payload) == batch
