"""Gemini API webhooks: the WebhookService surface (HTTP and google-genai's client.webhooks), and batch events
delivered to a real HTTP receiver, signed per Standard Webhooks and retried with backoff for a bounded time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx
import pytest

genai = pytest.importorskip("google.genai")
from google.genai import types  # noqa: E402

from infra.local.gemini_emulator.webhooks import sign  # noqa: E402
from tests.emulator.conftest import STACK_SECRET  # noqa: E402
from tests.emulator.emulator_helpers import (  # noqa: E402
    API_KEY,
    Received,
    Receiver,
    create,
    inline_body,
    start_receiver,
    upload,
    wait_for,
    wait_state,
)

BATCH_EVENTS = ["batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"]


@pytest.fixture
def own_receiver() -> Iterator[Receiver]:
    """A receiver of this test alone (the session's one also hears the configured emulator)."""
    running = start_receiver()
    try:
        yield running
    finally:
        running.close()


def make_hook(api: httpx.Client, uri: str, events: list[str] | None = None, **extra: object) -> dict:
    response = api.post(
        "/v1beta/webhooks", json={"uri": uri, "subscribed_events": events or BATCH_EVENTS, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def verify(delivery: Received, secret: str) -> dict:
    """Check a delivery as a receiver must (plain HMAC per Standard Webhooks); its parsed payload."""
    headers = delivery.headers
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + delivery.body, hashlib.sha256).digest()
    ).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split(" ")
    assert headers["content-type"] == "application/json"
    return json.loads(delivery.body)


# -- the WebhookService surface ----------------------------------------------------------------------------
def test_create_get_list_update_rotate_delete(api, own_receiver):
    made = make_hook(api, own_receiver.url, ["batch.succeeded"], name="MyBatchWebhook")
    secret = made.pop("new_signing_secret")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert made == {
        "id": made["id"],
        "name": "MyBatchWebhook",
        "uri": own_receiver.url,
        "subscribed_events": ["batch.succeeded"],
        "signing_secrets": [{"truncated_secret": f"whsec_...{secret[-4:]}"}],
        "state": "enabled",
    }
    assert len(made["id"]) == 36 and made["id"].isalnum()
    assert api.get(f"/v1beta/webhooks/{made['id']}").json() == made  # the secret is shown once only
    assert api.get("/v1beta/webhooks").json() == {"webhooks": [made]}

    patched = api.patch(
        f"/v1beta/webhooks/{made['id']}",
        params={"update_mask": "subscribed_events,state"},
        json={
            "subscribed_events": ["batch.failed", "batch.succeeded"],
            "state": "disabled",
            "name": "ignored",
        },
    ).json()
    assert (patched["subscribed_events"], patched["state"], patched["name"]) == (
        ["batch.failed", "batch.succeeded"],
        "disabled",
        "MyBatchWebhook",
    )
    rotated = api.post(f"/v1beta/webhooks/{made['id']}:rotateSigningSecret", json={}).json()
    assert set(rotated) == {"secret"} and rotated["secret"] != secret
    secrets = api.get(f"/v1beta/webhooks/{made['id']}").json()["signing_secrets"]
    assert [s["truncated_secret"][-4:] for s in secrets] == [rotated["secret"][-4:], secret[-4:]]
    assert "expire_time" in secrets[1] and "expire_time" not in secrets[0]  # the old one lives 24 h more

    assert api.delete(f"/v1beta/webhooks/{made['id']}").json() == {}
    gone = api.get(f"/v1beta/webhooks/{made['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["status"] == "NOT_FOUND"
    assert api.get("/v1beta/webhooks").json() == {}


def test_paging_and_a_chosen_id(api, own_receiver):
    names = [make_hook(api, own_receiver.url, name=f"h{i}")["name"] for i in range(3)]
    chosen = api.post(
        "/v1beta/webhooks",
        params={"webhook_id": "my-hook"},
        json={"uri": own_receiver.url, "subscribed_events": ["batch.failed"]},
    )
    assert chosen.json()["id"] == "my-hook"
    again = api.post(
        "/v1beta/webhooks",
        params={"webhook_id": "my-hook"},
        json={"uri": own_receiver.url, "subscribed_events": ["batch.failed"]},
    )
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    first = api.get("/v1beta/webhooks", params={"page_size": 2}).json()
    second = api.get(
        "/v1beta/webhooks", params={"page_size": 2, "page_token": first["next_page_token"]}
    ).json()
    assert [h.get("name") for h in first["webhooks"] + second["webhooks"]] == [*names, None]
    assert "next_page_token" not in second


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"subscribed_events": ["batch.succeeded"]}, "uri must be an absolute http(s) URL"),
        (
            {"uri": "ftp://x/y", "subscribed_events": ["batch.succeeded"]},
            "uri must be an absolute http(s) URL",
        ),
        ({"uri": "https://x/y", "subscribed_events": []}, "subscribed_events must be a non-empty list"),
        (
            {"uri": "https://x/y", "subscribed_events": ["batch.completed"]},
            "unknown events ['batch.completed']",
        ),
        (
            {"uri": "https://x/y", "subscribed_events": ["batch.failed"], "secret": "s"},
            'Unknown name "secret"',
        ),
    ],
)
def test_bad_webhooks_are_400s(api, body, message):
    response = api.post("/v1beta/webhooks", json=body)
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in response.json()["error"]["message"]


def test_webhooks_need_the_key(api, emulator):
    response = httpx.get(f"{emulator.base_url}/v1beta/webhooks", trust_env=False)
    assert response.status_code == 403


def test_google_genai_client_webhooks_against_the_emulator(api, emulator, own_receiver):
    client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url))
    hook = client.webhooks.create(
        name="sdk hook", subscribed_events=["batch.succeeded"], uri=own_receiver.url
    )
    assert (
        hook.new_signing_secret.startswith("whsec_") and hook.state == "enabled" and hook.name == "sdk hook"
    )
    assert [h.id for h in client.webhooks.list().webhooks] == [hook.id]
    fetched = client.webhooks.get(id=hook.id)
    assert fetched.new_signing_secret is None and fetched.signing_secrets[0].truncated_secret.startswith(
        "whsec_..."
    )
    updated = client.webhooks.update(id=hook.id, subscribed_events=["batch.succeeded", "batch.expired"])
    assert updated.subscribed_events == ["batch.succeeded", "batch.expired"]
    assert client.webhooks.rotate_signing_secret(id=hook.id).secret.startswith("whsec_")
    client.webhooks.delete(id=hook.id)
    assert client.webhooks.list().webhooks is None


# -- deliveries ------------------------------------------------------------------------------------------------
def test_every_batch_end_is_delivered_signed(api, emulator, own_receiver):
    hook = make_hook(api, own_receiver.url)
    secret = hook["new_signing_secret"]
    only_failures = make_hook(api, own_receiver.url + "?only=failed", ["batch.failed"])

    source = upload(
        api, (json.dumps({"key": "a", "request": {"content": {"parts": [{"text": "x"}]}}}) + "\n").encode()
    )
    succeeded = wait_state(
        api, create(api, {"batch": {"displayName": "f", "inputConfig": {"fileName": source["name"]}}})["name"]
    )
    emulator.set_faults({"fail_batches": True})
    failed = wait_state(api, create(api, inline_body(["a"]))["name"])
    emulator.set_faults({"expire_batches": True})
    expired = wait_state(api, create(api, inline_body(["b"]))["name"])
    emulator.set_faults({"pending_seconds": 60})
    cancelled = create(api, inline_body(["c"]))["name"]
    api.post(f"/v1beta/{cancelled}:cancel").raise_for_status()

    deliveries = own_receiver.wait_for(5)
    by_path: dict[str, list[dict]] = {}
    for delivery in deliveries:
        payload = verify(
            delivery, secret if "only" not in delivery.path else only_failures["new_signing_secret"]
        )
        by_path.setdefault(delivery.path, []).append(payload)
    main = {p["type"]: p for p in by_path["/hooks/gemini"]}
    assert set(main) == set(BATCH_EVENTS)
    assert main["batch.succeeded"]["data"] == {
        "id": succeeded["name"],
        "output_file_uri": succeeded["metadata"]["output"]["responsesFile"],
    }
    assert main["batch.failed"]["data"] == {
        "id": failed["name"],
        "error_code": failed["error"]["code"],
        "error_message": failed["error"]["message"],
    }
    assert main["batch.expired"]["data"] == {"id": expired["name"]}
    assert main["batch.cancelled"]["data"] == {"id": cancelled}
    assert main["batch.expired"]["timestamp"] == expired["metadata"]["endTime"]
    assert [p["type"] for p in by_path["/hooks/gemini?only=failed"]] == ["batch.failed"]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 5


def test_the_standard_webhooks_reference_library_accepts_a_delivery(api, own_receiver):
    standardwebhooks = pytest.importorskip("standardwebhooks")  # pip install standardwebhooks (dev extra)
    secret = make_hook(api, own_receiver.url)["new_signing_secret"]
    name = wait_state(api, create(api, inline_body(["a"]))["name"])["name"]
    delivery = own_receiver.wait_for(1)[0]
    payload = standardwebhooks.Webhook(secret).verify(delivery.body, delivery.headers)
    assert (payload["type"], payload["data"]["id"]) == ("batch.succeeded", name)
    tampered = dict(delivery.headers, **{"webhook-id": "msg_other"})
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(delivery.body, tampered)


def test_a_disabled_or_deleted_webhook_gets_nothing(api, own_receiver):
    disabled = make_hook(api, own_receiver.url + "?disabled")
    api.patch(f"/v1beta/webhooks/{disabled['id']}", json={"state": "disabled"}).raise_for_status()
    deleted = make_hook(api, own_receiver.url + "?deleted")
    api.delete(f"/v1beta/webhooks/{deleted['id']}").raise_for_status()
    live = make_hook(api, own_receiver.url)
    wait_state(api, create(api, inline_body(["a"]))["name"])
    delivery = own_receiver.wait_for(1)[0]
    assert verify(delivery, live["new_signing_secret"])["type"] == "batch.succeeded"
    wait_state(api, create(api, inline_body(["b"]))["name"])
    own_receiver.wait_for(2)
    assert {d.path for d in own_receiver.all()} == {"/hooks/gemini"}


def test_after_a_rotation_both_secrets_sign_until_the_old_one_is_revoked(api, own_receiver):
    hook = make_hook(api, own_receiver.url)
    old = hook["new_signing_secret"]
    new = api.post(f"/v1beta/webhooks/{hook['id']}:rotateSigningSecret", json={}).json()["secret"]
    wait_state(api, create(api, inline_body(["a"]))["name"])
    first = own_receiver.wait_for(1)[0]
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    assert verify(first, old) == verify(first, new)
    newest = api.post(
        f"/v1beta/webhooks/{hook['id']}:rotateSigningSecret",
        json={"revocation_behavior": "revoke_previous_secrets_immediately"},
    ).json()["secret"]
    wait_state(api, create(api, inline_body(["b"]))["name"])
    second = own_receiver.wait_for(2)[1]
    assert second.headers["webhook-signature"] == sign(
        newest, second.headers["webhook-id"], int(second.headers["webhook-timestamp"]), second.body
    )


def test_the_configured_webhook_is_retried_with_backoff_then_dropped(configured_api, configured, receiver):
    assert [h["id"] for h in configured_api.get("/v1beta/webhooks").json()["webhooks"]] == ["stack-hook"]
    receiver.fail_next(2, status=503)
    name = wait_state(configured_api, create(configured_api, inline_body(["a"]))["name"])["name"]
    delivered = receiver.wait_for(1)[0]
    attempts = receiver.all()
    assert [a.status for a in attempts] == [503, 503, 200]
    assert {a.headers["webhook-id"] for a in attempts} == {delivered.headers["webhook-id"]}  # one message
    for attempt in attempts:
        assert verify(attempt, STACK_SECRET)["data"]["id"] == name  # each attempt signed afresh
    counted = {"queued": 0, "inFlight": 0, "delivered": 1, "failedAttempts": 2, "abandoned": 0}
    wait_for(lambda: configured.stats()["webhookDeliveries"] == counted, 10, f"delivery counts {counted}")

    receiver.fail_next(
        1000, status=500
    )  # never a 2xx: retried for the 2 s the emulator was told, then dropped
    wait_state(configured_api, create(configured_api, inline_body(["b"]))["name"])
    wait_for(
        lambda: configured.stats()["webhookDeliveries"]["abandoned"] == 1, 15, "the delivery to be dropped"
    )
    failed = [a for a in receiver.all() if a.status == 500]
    assert 3 <= len(failed) <= 8  # 0.05 s doubling: ~6 attempts fit in 2 s
    gaps = [later.at - earlier.at for earlier, later in zip(failed, failed[1:], strict=False)]
    assert gaps[-1] > gaps[0]  # backing off


def test_a_webhook_deleted_while_retrying_stops_being_tried(configured_api, configured, receiver):
    receiver.fail_next(1000, status=500)
    wait_state(configured_api, create(configured_api, inline_body(["a"]))["name"])
    wait_for(lambda: len(receiver.all()) >= 2, 10, "a retry")
    assert configured_api.delete("/v1beta/webhooks/stack-hook").json() == {}
    count = len(receiver.all())
    wait_for(lambda: configured.stats()["webhookDeliveries"]["queued"] == 0, 10, "the queue to empty")
    assert len(receiver.all()) <= count + 1  # at most the attempt already under way
