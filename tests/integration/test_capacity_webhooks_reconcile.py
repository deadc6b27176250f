"""On the local stack: jobs living inside small Batch API quotas, batch webhooks ending jobs without the
scheduler, and uploads whose finalize events were lost found by the reconciler."""

from __future__ import annotations

import httpx
import pytest

from infra.local.processes import wait_until
from shared.domain.jobs import job_id_for
from tests.integration.pipeline_helpers import jsonl_records, read_vectors, upload

pytestmark = pytest.mark.integration


def emulator(env, path: str, method: str = "GET", **kwargs) -> dict:
    response = httpx.request(method, f"{env['GEMINI_API_BASE_URL']}/_emulator/{path}", timeout=30, trust_env=False,
                             **kwargs)
    response.raise_for_status()
    return response.json() if response.content else {}


def texts(n: int, topic: str) -> list[str]:
    return [f"record {i} of the {topic} file: a sentence or two about {topic} and nothing else at all" for i in range(n)]


def test_jobs_live_inside_a_quota_far_below_the_configured_limit(clean_stack, events):
    """The pipeline is told Tier 1 (500k tokens); the project's real cap here is a few hundred tokens and two
    batches. Every job succeeds, the emulator never holds more than its quota, and refusals stay few."""
    env = clean_stack.env
    emulator(env, "quotas", "PUT", json={"enqueued_tokens": 900, "concurrent_batches": 2})
    emulator(env, "stats:resetPeaks", "POST")
    uploads = [upload(env, f"quota/file-{n}.jsonl", jsonl_records(texts(12, f"topic {n}"))) for n in range(6)]
    job_ids = [job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation) for blob in uploads]
    for job_id in job_ids:
        event = events.event_for(job_id, timeout=240)
        assert event["status"] == "SUCCEEDED" and event["counts"]["succeeded"] == 12, event
        assert len(read_vectors(event)) == 12
    stats = emulator(env, "stats")
    assert stats["peakEnqueuedTokens"]["total"] <= 900 and stats["peakActiveBatches"] <= 2, stats
    rejections = stats["quotaRejections"]["total"]
    assert rejections <= 4, f"{rejections} creates refused: the ledger must learn the cap, not hammer it"


def test_batch_webhooks_end_jobs_without_the_scheduler(clean_stack, events):
    env = clean_stack.env
    if "webhook" not in clean_stack.functions:
        pytest.skip("no webhook function in the stack")
    clean_stack.reset_function_stats()
    with clean_stack.ticker_paused():  # no poll at all: only the signed webhook can tell the batch ended
        blob = upload(env, "hooks/doc.jsonl", jsonl_records(texts(5, "webhooks")))
        job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
        event = events.event_for(job_id, timeout=120)
        assert event["status"] == "SUCCEEDED" and sorted(read_vectors(event)) == [f"doc-{i}" for i in range(5)]
        assert clean_stack.function_stats()["webhook"]["invocations"] >= 1


def test_a_forged_webhook_is_refused(clean_stack):
    env = clean_stack.env
    if "webhook" not in clean_stack.functions:
        pytest.skip("no webhook function in the stack")
    answer = httpx.post(env["WEBHOOK_URL"], json={"type": "batch.succeeded", "data": {"id": "batches/x"}},
                        headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
                        timeout=30, trust_env=False)
    assert answer.status_code == 401


def test_uploads_whose_finalize_events_were_lost_are_found_by_the_reconciler(clean_stack, events):
    env = clean_stack.env
    clean_stack.drop_next("storage", 3)
    uploads = [upload(env, f"lost/file-{n}.jsonl", jsonl_records(texts(3, f"lost {n}"))) for n in range(4)]
    job_ids = [job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation) for blob in uploads]
    wait_until(lambda: clean_stack.relay_state().get("dropped_on_request", 0) >= 3, 60, 0.2, "the dropped events")
    for job_id in job_ids:  # the three lost ones after the reconciler's grace period (15 s here)
        event = events.event_for(job_id, timeout=180)
        assert event["status"] == "SUCCEEDED" and event["counts"]["succeeded"] == 3
