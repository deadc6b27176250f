"""The Gemini API emulator restarted under a running job, and failing while other jobs need the poller.

The emulator keeps its batches and files in memory (a temporary directory removed on exit): a restart
loses them, as a provider losing a batch would. The poller must notice (a 404 on the batch: the shard's
batch is created again as attempt 2, `shared/services/poll.py`) and the job must still end SUCCEEDED with
one event. While the emulator answers 5xx, or refuses connections, the poller's tick must still answer
(it only fans due work out), the poll worker that meets the error records it on the job and keeps the
shard's batch (an outage is not a lost batch), and other due jobs still end: one job's provider error never
stops another's work. The tick's summary no longer sees the workers' errors: this file asserts on the job
and shard documents, the events, and the relay's counters of the poll worker.

`LocalStack.part_stopped("gemini")` stops the emulator for a block and starts it again with the same argv,
environment and log, recording the new pid so `make down` and orphan cleanup still find it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from google.cloud import storage

from infra.local.processes import answers, wait_until
from shared.bootstrap import build_context
from shared.config import Settings
from shared.domain.jobs import SourceObject, job_id_for
from shared.errors import TransientError
from shared.ports import MessagePublisher
from shared.services.submit import submit_object
from tests.hostile.hostile_helpers import (
    await_events,
    emulator_batches,
    is_due,
    job_doc,
    shard_docs,
    wait_for_state,
)
from tests.integration.pipeline_helpers import jsonl_records, read_vectors, upload

pytestmark = pytest.mark.integration

TEXTS = ["a lighthouse keeper's diary", "the price of copper in 1890", "how bees find their hive"]


class DownPublisher(MessagePublisher):
    """Pub/Sub refusing every publish: a job that ends meets it and waits for the poller to announce it."""

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        raise TransientError("Pub/Sub unavailable")


def ended_unannounced(env: dict[str, str], name: str) -> str:
    """A job that ended (FAILED: empty input) but whose event could not be published: the poller's work,
    and none of it needs the Gemini API."""
    blob = storage.Client().bucket(env["INPUT_BUCKET"]).blob(f"manual/restart/{name}")
    blob.upload_from_string(b"", content_type="text/plain")
    blob.reload()
    source = SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation), size=0,
                          content_type="text/plain")
    ctx = build_context(Settings(input_prefix="manual/"))
    with pytest.raises(TransientError):
        submit_object(type(ctx)(**{**ctx.__dict__, "publisher": DownPublisher()}), source)
    job_id = job_id_for(source.bucket, source.name, source.generation)
    job = job_doc(env, job_id)
    assert job["state"] == "FAILED" and job["event_published_at"] is None
    return job_id


def poll_now(env: dict[str, str]) -> dict:
    """One tick of the poller, as Cloud Scheduler would call it; its summary."""
    answer = httpx.post(env["POLLER_URL"], headers={"Authorization": f"Bearer {env['POLLER_TOKEN']}"}, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


@contextmanager
def gemini_down(stack) -> Iterator[None]:
    """The emulator stopped for the block, then started again (empty) and ready."""
    health = stack.url("gemini", "/_emulator/health")
    with stack.part_stopped("gemini"):
        assert not answers(health)
        yield
    wait_until(lambda: httpx.get(health, timeout=5, trust_env=False).json().get("ready") is True, 120, 0.2,
               "the restarted emulator's model")


def running_shard(env: dict[str, str], name: str) -> tuple[str, dict]:
    """A job uploaded through the stack whose one shard's batch is at the provider (kept PENDING)."""
    blob = upload(env, name, jsonl_records(TEXTS))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    wait_for_state(env, job_id, "RUNNING")
    wait_until(lambda: [s.get("batch_name") is not None for s in shard_docs(env, job_id)] == [True], 60, 0.2,
               "the shard's batch")
    [shard] = shard_docs(env, job_id)
    return job_id, shard


def failed_polls(env: dict[str, str], job_id: str, failures: int, bystander: str) -> dict:
    """One tick while the provider fails: the tick answers and fans out the due shard and the due
    bystander; the shard's poll worker records the failure on the job, and the bystander's is announced."""
    summary = poll_now(env)
    assert summary["due_shards"] >= 1 and summary["due_jobs"] >= 1 and summary["errors"] == 0, summary
    wait_until(lambda: job_doc(env, job_id)["poll_failures"] >= failures
               and job_doc(env, bystander)["event_published_at"] is not None, 60, 0.2, "the poll workers")
    return job_doc(env, job_id)


def test_a_batch_lost_in_an_emulator_restart_is_created_again(clean_stack, gemini_emulator, events) -> None:
    env = clean_stack.env
    gemini_emulator.set_faults({"pending_seconds": 600})
    job_id, shard = running_shard(env, "restart/doc.jsonl")
    lost = shard["batch_name"]
    assert [b.state.value for b in emulator_batches(env)] == ["BATCH_STATE_PENDING"]
    bystanders = []
    with clean_stack.ticker_paused():
        # The provider answers 503 to every look at a batch: the tick answers, the other job ends.
        wait_until(lambda: is_due(shard_docs(env, job_id)[0]), 60, 0.2, "the shard to be due")
        bystanders.append(ended_unannounced(env, "during-5xx.txt"))
        gemini_emulator.set_faults({"pending_seconds": 600,
                                    "http_5xx": {"count": 1000, "status": 503, "path_contains": "/batches/"}})
        job = failed_polls(env, job_id, 1, bystanders[-1])
        assert job["last_error"]["code"] and "503" in job["last_error"]["message"] + job["last_error"]["code"], job
        # The provider is gone: connections refused. Same.
        with gemini_down(clean_stack):
            wait_until(lambda: is_due(shard_docs(env, job_id)[0]), 60, 0.2, "the shard to be due again")
            bystanders.append(ended_unannounced(env, "during-outage.txt"))
            job = failed_polls(env, job_id, 2, bystanders[-1])
            assert job["state"] == "RUNNING", job
            [shard] = shard_docs(env, job_id)
            assert (shard["state"], shard["batch_name"], shard["batch_attempts"]) == ("PENDING", lost, 1), \
                "an outage is not a lost batch"
            status = httpx.get(f"{env['STATUS_URL']}/jobs/{job_id}",
                               headers={"Authorization": f"Bearer {env['POLLER_TOKEN']}"}, timeout=60)
            assert status.status_code == 200 and status.json()["state"] == "RUNNING"
        assert emulator_batches(env) == [], "the restarted emulator lost its batches"
    received = await_events(events, [job_id, *bystanders], 180)
    [event] = received[job_id]
    assert event["status"] == "SUCCEEDED", event
    assert sorted(read_vectors(event)) == [f"doc-{i}" for i in range(len(TEXTS))]
    [shard] = shard_docs(env, job_id)
    assert shard["batch_attempts"] == 2 and shard["batch_name"] != lost, shard
    assert [b.display_name.endswith(f"[{job_id}/s0a2]") for b in emulator_batches(env)] == [True]
    for bystander in bystanders:
        [failed] = received[bystander]
        assert failed["status"] == "FAILED" and failed["error"]["code"] == "EMPTY_INPUT"
    worker = clean_stack.function_stats()["poll_worker"]
    assert worker["invocations"] >= 4 and worker["dead_lettered"] == 0 and worker["timeouts"] == 0, worker


def test_a_poll_that_meets_an_outage_backs_the_shard_off(clean_stack, gemini_emulator) -> None:
    env = clean_stack.env
    gemini_emulator.set_faults({"pending_seconds": 600})
    job_id, _ = running_shard(env, "backoff/doc.jsonl")
    with clean_stack.ticker_paused():
        wait_until(lambda: is_due(shard_docs(env, job_id)[0]), 60, 0.2, "the shard to be due")
        gemini_emulator.set_faults({"pending_seconds": 600,
                                    "http_5xx": {"count": 1000, "status": 503, "path_contains": "/batches/"}})
        poll_now(env)
        wait_until(lambda: job_doc(env, job_id)["poll_failures"] >= 1, 60, 0.2, "the failed poll")
        [shard] = shard_docs(env, job_id)
        assert not is_due(shard), f"the shard is due again at once (next_poll_at {shard['next_poll_at']})"
