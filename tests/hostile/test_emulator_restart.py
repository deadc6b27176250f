"""The Gemini API emulator restarted under a running job, and failing while other jobs need the poller.

The emulator keeps its batches and files in memory (a temporary directory removed on exit): a restart
loses them, as a provider losing a batch would. The poller must notice (a 404 on the batch: the shard is
retried by policy, `shared/services/poll.py`) and the job must still end SUCCEEDED with one event. While
the emulator answers 5xx, or refuses connections, a poller run must still answer and move the other due
jobs along: one job's provider error never stops the run.

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
from tests.hostile.hostile_helpers import await_events, due, emulator_batches, job_doc, wait_for_state
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


def test_a_batch_lost_in_an_emulator_restart_is_created_again(clean_stack, gemini_emulator, events) -> None:
    env = clean_stack.env
    gemini_emulator.set_faults({"pending_seconds": 600})
    blob = upload(env, "restart/doc.jsonl", jsonl_records(TEXTS))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    job = wait_for_state(env, job_id, "RUNNING")
    [lost] = [s["batch_name"] for s in job["shards"]]
    assert [b.state.value for b in emulator_batches(env)] == ["BATCH_STATE_PENDING"]
    bystanders = []
    with clean_stack.ticker_paused():
        # The provider answers 503 to every look at a batch: the run answers, and moves the other job.
        wait_until(lambda: due(env, job_id), 60, 0.2, "the job to be due")
        bystanders.append(ended_unannounced(env, "during-5xx.txt"))
        gemini_emulator.set_faults({"pending_seconds": 600,
                                    "http_5xx": {"count": 1000, "status": 503, "path_contains": "/batches/"}})
        summary = poll_now(env)
        assert summary["errors"] >= 1 and summary["events_published"] == 1, summary
        assert [e["job_id"] for e in summary["job_errors"]] == [job_id], summary
        # The provider is gone: connections refused. Same.
        with gemini_down(clean_stack):
            wait_until(lambda: due(env, job_id), 60, 0.2, "the job to be due again after its backoff")
            bystanders.append(ended_unannounced(env, "during-outage.txt"))
            summary = poll_now(env)
            assert summary["errors"] >= 1 and summary["events_published"] == 1, summary
            assert [e["job_id"] for e in summary["job_errors"]] == [job_id], summary
            job = job_doc(env, job_id)
            assert job["state"] == "RUNNING" and job["poll_failures"] == 2, job
            assert [s["batch_name"] for s in job["shards"]] == [lost], "an outage is not a lost batch"
            status = httpx.get(f"{env['STATUS_URL']}/jobs/{job_id}",
                               headers={"Authorization": f"Bearer {env['POLLER_TOKEN']}"}, timeout=60)
            assert status.status_code == 200 and status.json()["state"] == "RUNNING"
        assert emulator_batches(env) == [], "the restarted emulator lost its batches"
    received = await_events(events, [job_id, *bystanders], 180)
    [event] = received[job_id]
    assert event["status"] == "SUCCEEDED", event
    assert sorted(read_vectors(event)) == [f"doc-{i}" for i in range(len(TEXTS))]
    job = job_doc(env, job_id)
    [shard] = job["shards"]
    assert shard["batch_attempts"] == 2 and shard["batch_name"] != lost, shard
    assert job["poll_failures"] == 0
    assert [b.display_name.endswith(f"[{job_id}/s0a2]") for b in emulator_batches(env)] == [True]
    for bystander in bystanders:
        [failed] = received[bystander]
        assert failed["status"] == "FAILED" and failed["error"]["code"] == "EMPTY_INPUT"
