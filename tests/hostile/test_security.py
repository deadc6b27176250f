"""Who may call the HTTP functions, and where the stack's secrets must never show.

- The poller and the status API (list, one job, cancel) refuse a missing credential (401) and a wrong
  one (401; 403 for a valid identity that is not allowed, in the cloud's OIDC mode); the public webhook
  refuses a delivery that is unsigned, signed with another key, too old, or signed for another body (401).
  Refusing runs nothing: the job, its shard and the provider see no call. The right token and a delivery
  signed with the stack's secret then work, so the checks could fail.
- The stack's GEMINI_API_KEY (a long random value) appears in no log of any part of the stack, no
  Firestore document, no completion event, no output object, no job error or status answer, after jobs
  that went through the provider's error paths (429 on create, 5xx while polling, a refused model, failed
  batches, failed items); nor do the poller's token and the webhook signing secret.
- A pipeline acts on its own jobs collection only: another deployment's shards in the same database are
  invisible to its tick's queries and its webhook's lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore, storage

from infra.local.processes import wait_until
from shared.adapters.firestore_jobs import shards_collection
from shared.auth import AuthError, authorize
from shared.bootstrap import build_context
from shared.config import Settings
from shared.domain.jobs import Job, Shard, ShardState, SourceObject, job_id_for
from tests.hostile.hostile_helpers import await_events, is_due, job_doc, shard_docs, wait_for_state
from tests.integration.pipeline_helpers import jsonl_records, upload

TEXTS = ["a quiet harbour at dawn", "notes on medieval bridges", "the chemistry of bread"]


def emulator_calls(env: dict[str, str]) -> dict[str, int]:
    return httpx.get(f"{env['GEMINI_EMULATOR_ADMIN_URL']}/stats", timeout=10, trust_env=False).json()["calls"]


def wrong_credentials(env: dict[str, str]) -> dict[str, dict[str, str | bytes]]:
    token = env["POLLER_TOKEN"]
    return {
        "none": {},
        "empty": {"Authorization": ""},
        "scheme only": {"Authorization": "Bearer"},
        "lower-case scheme, wrong token": {"Authorization": "bearer x"},
        "wrong token": {"Authorization": "Bearer not-the-token"},
        "token plus a char": {"Authorization": f"Bearer {token}x"},
        "token less a char": {"Authorization": f"Bearer {token[:-1]}"},
        "token then more": {"Authorization": f"Bearer {token} {token}"},
        "token without scheme": {"Authorization": token},
        "basic scheme": {"Authorization": "Basic " + base64.b64encode(f"poller:{token}".encode()).decode()},
        "the api key": {"Authorization": f"Bearer {env['GEMINI_API_KEY']}"},
        "token in another header": {"X-Authorization": f"Bearer {token}"},
    }


def webhook_headers(secret: str, body: bytes, sent: float, message_id: str = "msg-hostile") -> dict[str, str]:
    """A delivery's headers as Standard Webhooks signs it: HMAC-SHA256 keyed by the secret's base64 part, over
    `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(sent))
    signature = base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    return {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature.decode()}",
            "content-type": "application/json"}


def forged_webhooks(env: dict[str, str], batch: str) -> dict[str, tuple[dict[str, str], bytes]]:
    """Deliveries naming `batch` that the webhook must refuse: unsigned, signed with another secret or by a
    credential of the stack, too old, or signed for another body."""
    body = json.dumps({"type": "batch.succeeded", "data": {"id": batch}}).encode()
    now = time.time()
    secret = env["WEBHOOK_SIGNING_SECRET"]
    other = "whsec_" + base64.b64encode(b"not the stack's secret, 32 bytes").decode()
    token_key = "whsec_" + base64.b64encode(env["POLLER_TOKEN"].encode()).decode()
    unsigned = {"content-type": "application/json"}
    return {
        "unsigned": (unsigned, body),
        "another secret": (webhook_headers(other, body, now), body),
        "the poller token as key": (webhook_headers(token_key, body, now), body),
        "the api key as signature": ({**webhook_headers(secret, body, now),
                                      "webhook-signature": f"v1,{env['GEMINI_API_KEY']}"}, body),
        "ten minutes old": (webhook_headers(secret, body, now - 600), body),
        "signed for another body": (webhook_headers(secret, body.replace(b"succeeded", b"failed"), now), body),
    }


def busy_state(env: dict[str, str], job_id: str) -> tuple[dict, list[dict]]:
    return job_doc(env, job_id), shard_docs(env, job_id)


@pytest.mark.integration
def test_endpoints_refuse_missing_and_wrong_credentials_and_run_nothing(clean_stack, gemini_emulator) -> None:
    env = clean_stack.env
    right = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}
    gemini_emulator.set_faults({"pending_seconds": 600})
    with clean_stack.ticker_paused():
        busy = upload(env, "security/busy.jsonl", jsonl_records(TEXTS))  # its batch waits: a tick would poll it,
        busy_id = job_id_for(env["INPUT_BUCKET"], busy.name, busy.generation)  # a cancel would stop it
        wait_for_state(env, busy_id, "RUNNING")

        def waiting_for_a_tick() -> bool:
            job, shards = busy_state(env, busy_id)
            return (len(shards) == 1 and shards[0].get("batch_name") is not None and is_due(shards[0])
                    and not shards[0]["lease_owner"] and not job["lease_owner"])

        wait_until(waiting_for_a_tick, 60, 0.2, "the job's shard to be due, and left alone")
        before = busy_state(env, busy_id)
        calls = emulator_calls(env)
        requests = [
            ("POST", env["POLLER_URL"]), ("GET", env["POLLER_URL"]),
            ("GET", f"{env['STATUS_URL']}/jobs"), ("GET", f"{env['STATUS_URL']}/jobs/{busy_id}"),
            ("POST", f"{env['STATUS_URL']}/jobs/{busy_id}:cancel"),
        ]
        for kind, headers in wrong_credentials(env).items():
            for method, url in requests:
                answer = httpx.request(method, url, headers=headers, timeout=60, trust_env=False)
                assert answer.status_code == 401, (kind, method, url, answer.status_code, answer.text)
                assert busy_id not in answer.text, (kind, url, answer.text)
        batch = before[1][0]["batch_name"]
        for kind, (headers, body) in forged_webhooks(env, batch).items():
            answer = httpx.post(env["WEBHOOK_URL"], headers=headers, content=body, timeout=60, trust_env=False)
            assert answer.status_code == 401, ("webhook", kind, answer.status_code, answer.text)
            assert batch not in answer.text, ("webhook", kind, answer.text)
        assert busy_state(env, busy_id) == before, "a refused call changed the job or its shard"
        assert emulator_calls(env) == calls, "a refused call reached the provider"

        # The right signature and the right token work, so each refusal above could have been a change.
        body = json.dumps({"type": "batch.succeeded", "data": {"id": batch}}).encode()
        answer = httpx.post(env["WEBHOOK_URL"], content=body, timeout=60, trust_env=False,
                            headers=webhook_headers(env["WEBHOOK_SIGNING_SECRET"], body, time.time()))
        assert answer.status_code == 200 and answer.json() == {"accepted": batch}, answer.text
        wait_until(lambda: emulator_calls(env) != calls, 60, 0.2, "the webhook's poll worker to look at the batch")
        wait_until(waiting_for_a_tick, 120, 0.2, "the shard to be due again after the webhook's poll")
        calls = emulator_calls(env)
        summary = httpx.post(env["POLLER_URL"], headers=right, timeout=120).json()
        assert summary["due_shards"] == 1 and summary["messages"] >= 1, summary
        wait_until(lambda: emulator_calls(env) != calls, 60, 0.2, "the tick's poll worker to look at the batch")
        listing = httpx.get(f"{env['STATUS_URL']}/jobs", headers=right, timeout=60)
        assert listing.status_code == 200 and busy_id in listing.text
        answer = httpx.post(f"{env['STATUS_URL']}/jobs/{busy_id}:cancel", headers=right, timeout=60)
        assert answer.status_code == 200 and answer.json()["cancelled"] is True
    assert job_doc(env, busy_id)["state"] == "CANCELLED"


@pytest.mark.integration
def test_a_credential_with_bytes_beyond_ascii_is_refused(stack) -> None:
    env = stack.env
    header = {"Authorization": b"Bearer \xe9\xff" + env["POLLER_TOKEN"].encode()}
    for method, url in (("POST", env["POLLER_URL"]), ("GET", f"{env['STATUS_URL']}/jobs")):
        answer = httpx.request(method, url, headers=header, timeout=60, trust_env=False)
        assert answer.status_code == 401, (method, url, answer.status_code, answer.text)


def test_cloud_mode_refuses_an_identity_that_is_not_allowed(monkeypatch) -> None:
    """OIDC (the cloud's mode): a valid token of another identity, or an unverified email, is 403; an
    invalid token 401; no credential configured at all refuses everyone (fail closed)."""
    from google.oauth2 import id_token

    settings = Settings(poller_token="", poller_audience="https://poller.example", poller_invoker_email="scheduler@p.iam")
    claims = {"email": "someone-else@p.iam", "email_verified": True}
    monkeypatch.setattr(id_token, "verify_oauth2_token", lambda token, request, audience: dict(claims))
    with pytest.raises(AuthError) as refused:
        authorize("Bearer signed-by-google", settings)
    assert refused.value.status == 403
    claims.update(email="scheduler@p.iam", email_verified=False)
    with pytest.raises(AuthError) as refused:
        authorize("Bearer signed-by-google", settings)
    assert refused.value.status == 403
    claims.update(email_verified=True)
    assert authorize("Bearer signed-by-google", settings) == "scheduler@p.iam"

    def invalid(token, request, audience):
        raise ValueError("Token expired")

    monkeypatch.setattr(id_token, "verify_oauth2_token", invalid)
    with pytest.raises(AuthError) as refused:
        authorize("Bearer expired", settings)
    assert refused.value.status == 401
    with pytest.raises(AuthError) as refused:
        authorize("Bearer anything", Settings(poller_token="", poller_audience=""))
    assert refused.value.status == 403


# -- the API key ---------------------------------------------------------------------------------------


def secret_forms(key: str) -> list[bytes]:
    """The key, and its random part alone (a log cutting or reformatting the prefix still leaks it)."""
    return [key.encode(), key.removeprefix("local-").encode()]


def stack_secrets(env: dict[str, str]) -> dict[str, list[bytes]]:
    """Each secret of the stack, in the forms a leak of it may take."""
    webhook = env["WEBHOOK_SIGNING_SECRET"]
    return {"GEMINI_API_KEY": secret_forms(env["GEMINI_API_KEY"]), "POLLER_TOKEN": [env["POLLER_TOKEN"].encode()],
            "WEBHOOK_SIGNING_SECRET": [webhook.encode(), webhook.removeprefix("whsec_").encode()]}


def leaks(blob: bytes, forms: list[bytes]) -> bool:
    return any(form in blob for form in forms)


def firestore_dump(project: str) -> Iterator[tuple[str, bytes]]:
    """Every document of the database, subcollections (a job's shards) included."""
    def walk(collections) -> Iterator[tuple[str, bytes]]:
        for collection in collections:
            for snapshot in collection.stream():
                yield snapshot.reference.path, json.dumps(snapshot.to_dict(), default=str).encode()
                yield from walk(snapshot.reference.collections())

    yield from walk(firestore.Client(project=project).collections())


@pytest.mark.integration
def test_no_secret_leaks(clean_stack, gemini_emulator, events) -> None:
    env = clean_stack.env
    assert len(env["GEMINI_API_KEY"]) >= 30
    secrets = stack_secrets(env)
    token = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}

    # Error paths at the provider: 429 on create, 5xx while polling, a model it refuses, batches that fail.
    # (Not a 5xx on create: its shard waits a lease, 9 minutes, for the poller to recover it by its tag.)
    gemini_emulator.set_faults({"fail_batches": True,
                                "create_429": {"count": 2, "retry_after_seconds": 0.2},
                                "http_5xx": {"count": 2, "status": 503, "path_contains": "/batches/"}})
    failing = upload(env, "leak/failing.jsonl", jsonl_records(TEXTS))
    refused = upload(env, "leak/refused.jsonl", jsonl_records(TEXTS), metadata={"model": "gemini-2.5-flash"})
    first = {job_id_for(env["INPUT_BUCKET"], b.name, b.generation): b for b in (failing, refused)}
    received = await_events(events, first, 240)
    for job_id, blob in first.items():
        [event] = received[job_id]
        assert event["status"] == "FAILED", (blob.name, event)
    gemini_emulator.set_faults({"fail_texts_containing": "POISON"})
    partial = upload(env, "leak/partial.jsonl", jsonl_records([*TEXTS, "POISON pill"]))
    partial_id = job_id_for(env["INPUT_BUCKET"], partial.name, partial.generation)
    [event] = await_events(events, [partial_id], 180)[partial_id]
    assert event["status"] == "PARTIALLY_SUCCEEDED" and event["output"]["errors"]
    job_ids = [*first, partial_id]

    # What to search: every log, document, event, object and answer the jobs above left.
    logs = sorted(Path(clean_stack.state_dir, "logs").glob("*"))
    assert {p.stem for p in logs} >= {"submit", "poller", "poll_worker", "complete", "status", "gemini", "relay",
                                      "ticker", "webhook"}
    texts = {f"log {p.name}": p.read_bytes() for p in logs}
    assert any(b"503" in text for text in texts.values()), "the provider's errors were not logged"
    documents = dict(firestore_dump(env["GOOGLE_CLOUD_PROJECT"]))
    assert sum("_shards/" in name for name in documents) >= 3 and any("ledgers" in name for name in documents)
    texts.update({f"firestore {name}": text for name, text in documents.items()})
    texts.update({f"event {attrs.get('job_id')}": json.dumps([attrs, data]).encode() for attrs, data in events.received})
    outputs = list(storage.Client().list_blobs(env["OUTPUT_BUCKET"]))
    assert any(b.name.endswith("errors.jsonl") for b in outputs)
    texts.update({f"object {b.name}": b.download_as_bytes() for b in outputs})
    errors = [job_doc(env, job_id).get("error") for job_id in job_ids]
    assert any((e or {}).get("code") == "INVALID_OPTION" for e in errors), errors  # the refused model
    listing = httpx.get(f"{env['STATUS_URL']}/jobs", headers=token, timeout=60)
    assert listing.status_code == 200 and len(listing.json()["jobs"]) == 3
    texts["status API list"] = listing.content
    for job_id in job_ids:
        answer = httpx.get(f"{env['STATUS_URL']}/jobs/{job_id}", headers=token, timeout=60)
        assert answer.status_code == 200, answer.text
        texts[f"status API {job_id}"] = answer.content
    texts["relay health"] = json.dumps(clean_stack.relay_state()).encode()
    texts["ticker health"] = json.dumps(clean_stack.ticker_state()).encode()

    # The searches find each secret where it belongs (the stack's env file), so finding nothing means something.
    env_file = (clean_stack.state_dir / "env").read_bytes()
    assert all(leaks(env_file, forms) for forms in secrets.values())
    findings = {name: [where for where, text in texts.items() if leaks(text, forms)] for name, forms in secrets.items()}
    assert not any(findings.values()), f"secrets show in: {findings}"


# -- another pipeline's documents ------------------------------------------------------------------------


@pytest.mark.integration
def test_a_pipeline_sees_no_shard_of_another_jobs_collection(stack) -> None:
    """Two deployments sharing a Firestore database (a JOBS_COLLECTION each, as infra/terraform allows) must
    not see each other's shards: this pipeline's tick would poll or admit them, its webhook poll them."""
    ours = build_context(Settings())
    other_collection = f"other_jobs_{uuid.uuid4().hex[:8]}"
    other = build_context(Settings(jobs_collection=other_collection, ledgers_collection=f"{other_collection}_ledgers"))
    now = datetime.now(UTC)
    job_id = f"job-other-{uuid.uuid4().hex[:12]}"
    source = SourceObject(bucket="elsewhere", name="theirs.jsonl", generation="1", size=10)
    ledger = "gemini~gemini-embedding-001"
    batch = f"batches/theirs-{uuid.uuid4().hex[:8]}"

    def shards(tx) -> None:
        for index, (state, name) in enumerate([(ShardState.STAGED, None), (ShardState.PENDING, batch)]):
            tx.added.append(Shard(job_id=job_id, index=tx.job.allocate_shard(), state=state, batch_name=name,
                                  records_uri=f"gs://elsewhere/records-{index}.jsonl", request_count=1, ledger=ledger,
                                  created_at=now, updated_at=now, next_poll_at=now - timedelta(minutes=1)))

    with stack.ticker_paused():  # our own tick must not act on them meanwhile
        other.jobs.create(Job(job_id=job_id, source=source, created_at=now, updated_at=now))
        try:
            other.jobs.update(job_id, shards)
            assert [s.index for s in other.jobs.shards(job_id)] == [0, 1], "their pipeline sees its shards"
            seen = {
                "due": [s.index for s in ours.jobs.due_shards(datetime.now(UTC), 1000) if s.job_id == job_id],
                "queue": [s.index for s in ours.jobs.waiting_shards(ledger, 1000) if s.job_id == job_id],
                "webhook": ours.jobs.shard_of_batch(batch) is not None,
            }
        finally:
            client = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])
            for snapshot in client.collection(other_collection).document(job_id).collection(shards_collection(other_collection)).stream():
                snapshot.reference.delete()
            client.collection(other_collection).document(job_id).delete()
    assert seen == {"due": [], "queue": [], "webhook": False}, f"this pipeline sees another's shards: {seen}"
