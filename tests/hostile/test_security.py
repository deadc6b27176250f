"""Who may call the HTTP functions, and where the Gemini API key must never show.

- The poller and the status API (list, one job, cancel) refuse a missing credential (401) and a wrong
  one (401; 403 for a valid identity that is not allowed, in the cloud's OIDC mode), and refusing runs
  nothing: the jobs and the provider see no call. The right token then works, so the checks could fail.
- The stack's GEMINI_API_KEY (a long random value) appears in no log of any part of the stack, no
  Firestore document, no completion event, no output object, no job error or status answer, after jobs
  that went through the provider's error paths (429 and 5xx on create, a refused model, failed batches,
  failed items).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore, storage

from infra.local.processes import wait_until
from shared.auth import AuthError, authorize
from shared.config import Settings
from shared.domain.jobs import job_id_for
from tests.hostile.hostile_helpers import await_events, due, emulator_batches, job_doc, wait_for_state
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
        "latin-1 bytes": {"Authorization": b"Bearer \xe9\xff" + token.encode()},
        "token in another header": {"X-Authorization": f"Bearer {token}"},
    }


@pytest.mark.integration
def test_endpoints_refuse_missing_and_wrong_credentials_and_run_nothing(clean_stack, gemini_emulator) -> None:
    env = clean_stack.env
    right = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}
    with clean_stack.ticker_paused():
        ready = upload(env, "security/ready.jsonl", jsonl_records(TEXTS))  # its batch ends: a poll hands it over
        ready_id = job_id_for(env["INPUT_BUCKET"], ready.name, ready.generation)
        wait_for_state(env, ready_id, "RUNNING")
        wait_until(lambda: [b.state.value for b in emulator_batches(env)] == ["BATCH_STATE_SUCCEEDED"], 60, 0.2, "batch")
        gemini_emulator.set_faults({"pending_seconds": 600})
        busy = upload(env, "security/busy.jsonl", jsonl_records(TEXTS))  # its batch waits: a cancel would stop it
        busy_id = job_id_for(env["INPUT_BUCKET"], busy.name, busy.generation)
        wait_for_state(env, busy_id, "RUNNING")
        wait_until(lambda: due(env, ready_id) and not job_doc(env, busy_id)["lease_owner"], 30, 0.2,
                   "the first job to be due, and the second one left alone")
        before = {job_id: job_doc(env, job_id) for job_id in (ready_id, busy_id)}
        calls = emulator_calls(env)
        requests = [
            ("POST", env["POLLER_URL"]), ("GET", env["POLLER_URL"]),
            ("GET", f"{env['STATUS_URL']}/jobs"), ("GET", f"{env['STATUS_URL']}/jobs/{busy_id}"),
            ("POST", f"{env['STATUS_URL']}/jobs/{busy_id}:cancel"), ("POST", f"{env['STATUS_URL']}/jobs/{ready_id}:cancel"),
        ]
        for kind, headers in wrong_credentials(env).items():
            for method, url in requests:
                answer = httpx.request(method, url, headers=headers, timeout=60, trust_env=False)
                assert answer.status_code == 401, (kind, method, url, answer.status_code, answer.text)
                assert busy_id not in answer.text and ready_id not in answer.text, (kind, url, answer.text)
        assert {job_id: job_doc(env, job_id) for job_id in before} == before, "a refused call changed a job"
        assert emulator_calls(env) == calls, "a refused call reached the provider"

        # The right token works, so each refusal above could have been a change.
        summary = httpx.post(env["POLLER_URL"], headers=right, timeout=120).json()
        assert summary["handed_to_complete"] == 1, summary
        answer = httpx.post(f"{env['STATUS_URL']}/jobs/{busy_id}:cancel", headers=right, timeout=60)
        assert answer.status_code == 200 and answer.json()["cancelled"] is True
    assert job_doc(env, busy_id)["state"] == "CANCELLED"
    assert wait_for_state(env, ready_id, "SUCCEEDED")


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


def leaks(blob: bytes, forms: list[bytes]) -> bool:
    return any(form in blob for form in forms)


def firestore_dump(project: str) -> Iterator[tuple[str, bytes]]:
    client = firestore.Client(project=project)
    for collection in client.collections():
        for snapshot in collection.stream():
            yield f"{collection.id}/{snapshot.id}", json.dumps(snapshot.to_dict(), default=str).encode()


@pytest.mark.integration
def test_the_api_key_never_leaks(clean_stack, gemini_emulator, events) -> None:
    env = clean_stack.env
    key = env["GEMINI_API_KEY"]
    assert len(key) >= 30
    forms = secret_forms(key)
    token = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}

    # Error paths at the provider: 429 and 5xx on create, a model it refuses, batches that fail.
    gemini_emulator.set_faults({"fail_batches": True,
                                "create_429": {"count": 2, "retry_after_seconds": 0.2},
                                "http_5xx": {"count": 2, "status": 503, "path_contains": "asyncBatchEmbedContent"}})
    failing = upload(env, "leak/failing.jsonl", jsonl_records(TEXTS))
    refused = upload(env, "leak/refused.jsonl", jsonl_records(TEXTS), metadata={"model": "gemini-2.5-flash"})
    first = {job_id_for(env["INPUT_BUCKET"], b.name, b.generation): b for b in (failing, refused)}
    received = await_events(events, first, 180)
    for job_id, blob in first.items():
        [event] = received[job_id]
        assert event["status"] == "FAILED", (blob.name, event)
    gemini_emulator.set_faults({"fail_texts_containing": "POISON"})
    partial = upload(env, "leak/partial.jsonl", jsonl_records([*TEXTS, "POISON pill"]))
    partial_id = job_id_for(env["INPUT_BUCKET"], partial.name, partial.generation)
    [event] = await_events(events, [partial_id], 180)[partial_id]
    assert event["status"] == "PARTIALLY_SUCCEEDED" and event["output"]["errors"]

    # The searches find the key where it belongs (the stack's env file), so finding nothing means something.
    assert leaks((clean_stack.state_dir / "env").read_bytes(), forms)
    logs = sorted(Path(clean_stack.state_dir, "logs").glob("*"))
    assert {p.stem for p in logs} >= {"submit", "poller", "complete", "status", "gemini", "relay", "ticker"}
    assert any(b"will retry" in p.read_bytes() for p in logs), "the transient error path was not logged"
    findings = [f"log {p.name}" for p in logs if leaks(p.read_bytes(), forms)]
    documents = dict(firestore_dump(env["GOOGLE_CLOUD_PROJECT"]))
    assert len(documents) >= 3
    findings += [f"firestore {name}" for name, text in documents.items() if leaks(text, forms)]
    findings += [f"event {attrs.get('job_id')}" for attrs, data in events.received
                 if leaks(json.dumps([attrs, data]).encode(), forms)]
    outputs = list(storage.Client().list_blobs(env["OUTPUT_BUCKET"]))
    assert any(b.name.endswith("errors.jsonl") for b in outputs)
    findings += [f"object {b.name}" for b in outputs if leaks(b.download_as_bytes(), forms)]
    errors = [job_doc(env, job_id).get("error") for job_id in [*first, partial_id]]
    assert any("refused" in (e or {}).get("message", "") for e in errors), errors
    findings += [f"job error {e}" for e in errors if e and leaks(json.dumps(e, default=str).encode(), forms)]
    listing = httpx.get(f"{env['STATUS_URL']}/jobs", headers=token, timeout=60)
    assert listing.status_code == 200 and len(listing.json()["jobs"]) == 3
    findings += ["status API"] if leaks(listing.content, forms) else []
    findings += [f"{part} health"
                 for part, state in (("relay", clean_stack.relay_state()), ("ticker", clean_stack.ticker_state()))
                 if leaks(json.dumps(state).encode(), forms)]
    assert not findings, f"the Gemini API key shows in: {findings}"
