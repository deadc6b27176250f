"""At-least-once delivery and provider faults, with the real emulators, functions and official clients.

Faults come from the Gemini emulator's fault injection; crashes are simulated by subclassing our own
adapters so that a call completes and then the "process dies" (a BaseException no handler catches).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from google.cloud import firestore, pubsub_v1, storage

from infra.local.processes import wait_until
from infra.local.relay import storage_event
from shared.adapters.firestore_jobs import shards_collection
from shared.adapters.gcs_blobs import GcsBlobStore
from shared.adapters.gemini_provider import GeminiBatchProvider
from shared.bootstrap import build_context
from shared.config import Settings
from shared.domain.jobs import JobState, SourceObject, job_id_for
from shared.gemini import GeminiClient
from shared.services.complete import write_shard
from shared.services.poll import poll_shard
from shared.services.submit import SubmitOutcome, resume_submission, submit_object
from tests.integration.pipeline_helpers import jsonl_records, read_gs, read_vectors, upload

pytestmark = pytest.mark.integration

TEXTS = [f"passage {i} about {topic}" for i, topic in enumerate(
    ["rivers", "mountains", "taxes", "cooking", "chess", "music", "trains", "birds", "code", "tea"] * 2)]


class Crash(BaseException):
    """The process dies here: nothing catches it, nothing is saved after it."""


def job_doc(env, job_id: str, collection: str | None = None) -> dict:
    snapshot = firestore.Client().collection(collection or env.get("JOBS_COLLECTION", "embedding_jobs")).document(job_id).get()
    return snapshot.to_dict() or {}


def shard_docs(env, job_id: str, collection: str | None = None) -> list[dict]:
    jobs = firestore.Client().collection(collection or env.get("JOBS_COLLECTION", "embedding_jobs"))
    return [s.to_dict() for s in jobs.document(job_id).collection(shards_collection(jobs.id)).order_by("index").stream()]


def wait_for_state(env, job_id: str, *states: str, timeout: float = 120) -> dict:
    wait_until(lambda: job_doc(env, job_id).get("state") in states, timeout, 0.2, f"job {job_id} in {states}")
    return job_doc(env, job_id)


def await_lease_lapsed(env, job_id: str, shard: int | None = None, collection: str | None = None) -> None:
    """A dead worker's lease lapses on its own (a simulated crash may release it on the way out)."""
    def lapsed() -> bool:
        doc = job_doc(env, job_id, collection) if shard is None else shard_docs(env, job_id, collection)[shard]
        until = doc["lease_until"]
        return until is None or until.timestamp() < time.time()

    wait_until(lapsed, 30, 0.2, "the lease to lapse")


def emulator_batches(env) -> list:
    with GeminiClient(env["GEMINI_API_KEY"], base_url=env["GEMINI_API_BASE_URL"]) as client:
        return list(client.iter_batches())


def post_finalize_event(env, blob: storage.Blob, event_id: str) -> int:
    blob.reload()
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": blob.bucket.name, "objectId": blob.name,
                  "payloadFormat": "JSON_API_V1"}
    headers, body = storage_event(event_id, attributes, json.dumps(blob._properties).encode()).http()
    return httpx.post(env["SUBMIT_URL"], headers=headers, content=body, timeout=120).status_code


def manual_context(env, **settings) -> tuple[Settings, object]:
    """A context over the stack's real services whose inputs live under `manual/` (the running submit
    function ignores them, so the test alone delivers their events)."""
    suffix = uuid.uuid4().hex[:8]  # jobs no running function reads: not the poller, not a webhook's poll
    config = Settings(input_prefix="manual/", jobs_collection=f"manual_jobs_{suffix}",
                      ledgers_collection=f"manual_ledgers_{suffix}", **settings)
    return config, build_context(config)


def source_of(blob: storage.Blob) -> SourceObject:
    blob.reload()
    return SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation), size=blob.size,
                        content_type=blob.content_type, metadata=blob.metadata or {})


def upload_manual(env, name: str, data: bytes) -> storage.Blob:
    blob = storage.Client().bucket(env["INPUT_BUCKET"]).blob(f"manual/{name}")
    blob.upload_from_string(data, content_type="application/jsonl")
    return blob


# -- ingestion: exactly one job per object generation -------------------------------------------------


def test_five_deliveries_of_one_event_make_one_job_and_one_batch(clean_stack, events):
    env = clean_stack.env
    blob = upload(env, "dup/five.jsonl", jsonl_records(TEXTS[:5]))
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda i=i: statuses.append(post_finalize_event(env, blob, f"redelivery-{i}")))
               for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and event["counts"]["succeeded"] == 5
    assert len(emulator_batches(env)) == 1
    jobs = list(firestore.Client().collection("embedding_jobs").stream())
    assert [j.id for j in jobs] == [job_id]
    assert set(statuses) <= {200, 204, 500}, statuses  # 500: "busy, retry" while another delivery held the job
    assert len(events.drain(2)) == 1


def test_a_new_generation_of_the_same_name_is_a_new_job(clean_stack, events):
    env = clean_stack.env
    first = upload(env, "gen/doc.jsonl", jsonl_records(TEXTS[:2]))
    first_id = job_id_for(env["INPUT_BUCKET"], first.name, first.generation)
    assert events.event_for(first_id)["counts"]["total"] == 2
    second = upload(env, "gen/doc.jsonl", jsonl_records(TEXTS[:3]))
    second_id = job_id_for(env["INPUT_BUCKET"], second.name, second.generation)
    assert second_id != first_id
    event = events.event_for(second_id)
    assert event["counts"]["total"] == 3 and event["source"]["generation"] == str(second.generation)
    assert event["output"]["manifest"] != events.event_for(first_id)["output"]["manifest"]


def test_a_crash_after_the_batch_was_created_is_recovered_without_a_second_batch(clean_stack, events):
    env = clean_stack.env
    config, ctx = manual_context(env, lease_seconds=40, gemini_timeout_seconds=5)

    class DiesAfterCreate(GeminiBatchProvider):
        def create_batch(self, **kwargs):
            super().create_batch(**kwargs)
            raise Crash()

    provider = ctx.providers["gemini"]
    crashing = type(ctx)(**{**ctx.__dict__, "providers": {"gemini": DiesAfterCreate(provider.client)}})
    blob = upload_manual(env, "crash.jsonl", jsonl_records(TEXTS[:4]))
    source = source_of(blob)
    with pytest.raises(Crash):
        submit_object(crashing.for_invocation(), source)
    assert len(emulator_batches(env)) == 1
    job_id = job_id_for(source.bucket, source.name, source.generation)
    assert shard_docs(env, job_id, config.jobs_collection)[0]["state"] == "CREATING"
    await_lease_lapsed(env, job_id, shard=0, collection=config.jobs_collection)  # lapses before another takes over
    assert poll_shard(ctx.for_invocation(), next(iter(ctx.jobs.shards(job_id)))) == "recovered"
    assert len(emulator_batches(env)) == 1, "the worker after it adopted the batch instead of creating another"
    # This job lives apart from the stack's functions: this test moves it on itself.
    wait_until(lambda: poll_shard(ctx.for_invocation(), next(iter(ctx.jobs.shards(job_id)))) == "handed_to_complete",
               60, 0.3, "the batch to end")
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written_and_finished"
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and event["counts"]["succeeded"] == 4


def test_staging_resumed_over_many_invocations_reads_on_from_where_it_stopped(clean_stack):
    """Each delivery stages one shard and hands on; a resumed one opens the object at its saved position
    (a ranged read from fake-gcs-server through the official client) and duplicates across cuts are found."""
    env = clean_stack.env
    config, ctx = manual_context(env, stage_budget_seconds=0, max_tokens_per_batch=200)
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i}: {TEXTS[i % len(TEXTS)]} and some more words"})
             for i in range(120)] + [json.dumps({"id": "r3", "text": "the same id again"})]
    source = source_of(upload_manual(env, "resume.jsonl", ("\n".join(lines) + "\n").encode()))
    job_id = submit_object(ctx.for_invocation(), source).job_id
    deliveries = 1
    while not ctx.jobs.get(job_id).staging.done:
        resume_submission(ctx.for_invocation(), job_id)
        deliveries += 1
        assert deliveries < 100
    job = ctx.jobs.get(job_id)
    assert deliveries > 5 and job.counts.total == 120 and job.counts.input_problems == 1
    assert job.input_problems.sample[0]["code"] == "DUPLICATE_ID"
    ids = [row["id"] for shard in ctx.jobs.shards(job_id) for row in map(json.loads, read_gs(shard.records_uri).splitlines())]
    assert ids == [f"r{i}" for i in range(120)], "each record staged once, in order"


# -- completion: partial failure, retries, duplicates, crashes --------------------------------------------


def test_items_that_fail_once_are_resubmitted_and_nothing_is_lost(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"item_failure_rate": 0.3, "item_failure_attempts": 1})
    env = clean_stack.env
    blob = upload(env, "partial/once.jsonl", jsonl_records(TEXTS))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and event["counts"] == {"total": 20, "succeeded": 20, "failed": 0,
                                                                  "input_problems": 0, "reused": 0}
    assert sorted(read_vectors(event)) == sorted(f"doc-{i}" for i in range(20))
    shards = shard_docs(env, job_id)
    assert len(shards) >= 2 and shards[1]["parent"] == 0 and shards[1]["item_attempt"] == 2


def test_items_that_always_fail_end_partially_succeeded_with_their_errors(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"fail_texts_containing": "POISON"})
    env = clean_stack.env
    texts = TEXTS[:6] + ["POISON pill one", "POISON pill two"]
    blob = upload(env, "partial/always.jsonl", jsonl_records(texts))
    event = events.event_for(job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation))
    assert event["status"] == "PARTIALLY_SUCCEEDED"
    assert event["counts"] == {"total": 8, "succeeded": 6, "failed": 2, "input_problems": 0, "reused": 0}
    assert event["success_rate"] == 75.0 and event["low_success_rate"] is True
    errors = [json.loads(line) for line in read_gs(event["output"]["errors"]).splitlines()]
    assert sorted(e["id"] for e in errors) == ["doc-6", "doc-7"] and {e["attempts"] for e in errors} == {3}


def test_batches_that_expire_are_retried_then_the_job_fails_with_an_event(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"expire_batches": True})
    env = clean_stack.env
    blob = upload(env, "expiry/doc.jsonl", jsonl_records(TEXTS[:3]))
    event = events.event_for(job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation))
    assert event["status"] == "FAILED" and "EXPIRED" in event["error"]["code"]
    assert event["counts"]["failed"] == 3
    assert len(emulator_batches(env)) == 2, "one retry (max_batch_attempts=2)"


def test_a_429_storm_on_create_delays_the_job_but_it_completes(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"create_429": {"count": 8, "retry_after_seconds": 0.2}})
    env = clean_stack.env
    blob = upload(env, "storm/doc.jsonl", jsonl_records(TEXTS[:3]))
    event = events.event_for(job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation))
    assert event["status"] == "SUCCEEDED"
    assert len(emulator_batches(env)) == 1


def test_a_5xx_storm_while_polling_backs_off_and_completes(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"http_5xx": {"count": 12, "status": 503, "path_contains": "/batches/"}})
    env = clean_stack.env
    blob = upload(env, "storm/poll.jsonl", jsonl_records(TEXTS[:3]))
    event = events.event_for(job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation))
    assert event["status"] == "SUCCEEDED"


def test_cancel_stops_the_batch_and_announces_cancelled(clean_stack, gemini_emulator, events):
    gemini_emulator.set_faults({"pending_seconds": 600})
    env = clean_stack.env
    blob = upload(env, "cancel/doc.jsonl", jsonl_records(TEXTS[:3]))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    wait_for_state(env, job_id, "RUNNING")
    headers = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}
    assert httpx.post(f"{env['STATUS_URL']}/jobs/{job_id}:cancel", timeout=60).status_code == 401
    answer = httpx.post(f"{env['STATUS_URL']}/jobs/{job_id}:cancel", headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json()["cancelled"] is True
    event = events.event_for(job_id)
    assert event["status"] == "CANCELLED" and event["error"]["code"] == "CANCELLED"
    [batch] = emulator_batches(env)
    assert batch.state.value == "BATCH_STATE_CANCELLED"


def test_duplicate_complete_messages_give_one_event(clean_stack, events):
    env = clean_stack.env
    blob = upload(env, "dup/complete.jsonl", jsonl_records(TEXTS[:3]))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    events.event_for(job_id)
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(env["GOOGLE_CLOUD_PROJECT"], env["COMPLETE_TOPIC"])
    acked = clean_stack.relay_state()["acked"]
    for _ in range(3):
        publisher.publish(topic, json.dumps({"job_id": job_id}).encode(), job_id=job_id).result(30)
    wait_until(lambda: clean_stack.relay_state()["acked"] >= acked + 3, 60, 0.2, "the duplicate deliveries")
    assert len(events.drain(2)) == 1


def test_two_pollers_at_once_hand_a_job_over_once(clean_stack, events):
    env = clean_stack.env
    headers = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}
    with clean_stack.ticker_paused():
        blob = upload(env, "pollers/doc.jsonl", jsonl_records(TEXTS[:3]))
        job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
        wait_until(lambda: [s.get("batch_name") is not None for s in shard_docs(env, job_id)] == [True], 60, 0.2,
                   "the batch created")
        wait_until(lambda: [b.state.value for b in emulator_batches(env)] == ["BATCH_STATE_SUCCEEDED"], 60, 0.2,
                   "the batch")
        summaries: list[dict] = []  # its webhook may have handed it on already: the two ticks race that too
        threads = [threading.Thread(target=lambda: summaries.append(
            httpx.post(env["POLLER_URL"], headers=headers, timeout=120).json())) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and len(events.drain(2)) == 1
    assert [s["state"] for s in shard_docs(env, job_id)] == ["WRITTEN"]


@pytest.fixture
def private_complete_topic(clean_stack) -> Iterator[str]:
    """A complete topic no function is subscribed to: the test delivers what is published on it."""
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(clean_stack.env["GOOGLE_CLOUD_PROJECT"], f"complete-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=path)
    yield path.rsplit("/", 1)[1]
    publisher.delete_topic(topic=path)


def test_a_complete_killed_half_way_then_rerun_writes_one_manifest_and_one_event(clean_stack, events,
                                                                                 private_complete_topic):
    env, topic = clean_stack.env, private_complete_topic
    config, ctx = manual_context(env, complete_topic=topic, max_tokens_per_batch=25, lease_seconds=40,
                                 gemini_timeout_seconds=5)
    blob = upload_manual(env, "halfway.jsonl", jsonl_records(TEXTS[:10]))
    source = source_of(blob)
    job_id = job_id_for(source.bucket, source.name, source.generation)
    with clean_stack.ticker_paused():
        assert submit_object(ctx.for_invocation(), source).outcome == SubmitOutcome.SUBMITTED
        count = len(shard_docs(env, job_id, config.jobs_collection))
        assert count >= 3
        wait_until(lambda: len(emulator_batches(env)) == count and all(
            b.state.value == "BATCH_STATE_SUCCEEDED" for b in emulator_batches(env)), 60, 0.2, "batches")
        for shard in ctx.jobs.shards(job_id):
            assert poll_shard(ctx.for_invocation(), shard) == "handed_to_complete"

        class DiesAfterFourFiles(GcsBlobStore):
            written = 0

            def open_write(self, uri, content_type):
                if DiesAfterFourFiles.written >= 4:
                    raise Crash()
                DiesAfterFourFiles.written += 1
                return super().open_write(uri, content_type)

        crashing = type(ctx)(**{**ctx.__dict__, "blobs": DiesAfterFourFiles(storage.Client())})
        with pytest.raises(Crash):
            for index in range(count):
                write_shard(crashing.for_invocation(), job_id, index)
        assert job_doc(env, job_id, config.jobs_collection)["state"] == "RUNNING"
        crashed = next(s["index"] for s in shard_docs(env, job_id, config.jobs_collection) if s["state"] == "SUCCEEDED")
        await_lease_lapsed(env, job_id, shard=crashed, collection=config.jobs_collection)
        outcomes = [write_shard(ctx.for_invocation(), job_id, index) for index in range(count)]
        assert outcomes.count("written_and_finished") == 1 and outcomes[0] == "already_written"
        assert {write_shard(ctx.for_invocation(), job_id, index) for index in range(count)} == {"already_written"}
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and len(event["output"]["embeddings"]) == count
    assert sorted(read_vectors(event)) == sorted(f"doc-{i}" for i in range(10)), "no item lost or doubled"
    manifests = [b.name for b in storage.Client().list_blobs(env["OUTPUT_BUCKET"]) if b.name.endswith("manifest.json")]
    assert len(manifests) == 1
    assert len(events.drain(2)) == 1
    assert job_doc(env, job_id, config.jobs_collection)["state"] == JobState.SUCCEEDED.value


def test_a_batch_larger_than_one_complete_is_written_by_a_chain_whose_killed_link_reruns_whole(clean_stack, events,
                                                                                               private_complete_topic):
    """COMPLETE_MAX_ROWS 3: the one batch of 10 texts is written by 4 invocations (3, 3, 3, 1 rows). The
    second one dies after its files and its keys file, before its transaction; rerun once its lease lapsed,
    the chain ends whole: every id once, one event, one manifest listing the 4 shards' files."""
    env, topic = clean_stack.env, private_complete_topic
    config, submitter = manual_context(env, complete_topic=topic, complete_max_rows=3, lease_seconds=40,
                                       gemini_timeout_seconds=5)
    ctx = build_context(config.model_copy(update={"lease_seconds": 10}))  # complete's: a dead one's lapses soon
    source = source_of(upload_manual(env, "chain.jsonl", jsonl_records(TEXTS[:10])))
    job_id = job_id_for(source.bucket, source.name, source.generation)

    class DiesAfterTheKeysFile(GcsBlobStore):
        def write_bytes(self, uri, data, content_type):
            info = super().write_bytes(uri, data, content_type)
            if "/written-" in uri:
                raise Crash()
            return info

    with clean_stack.ticker_paused():
        assert submit_object(submitter.for_invocation(), source).outcome == SubmitOutcome.SUBMITTED
        wait_until(lambda: [b.state.value for b in emulator_batches(env)] == ["BATCH_STATE_SUCCEEDED"], 60, 0.2,
                   "the batch")
        [root] = ctx.jobs.shards(job_id)
        assert poll_shard(ctx.for_invocation(), root) == "handed_to_complete"
        assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
        crashing = type(ctx)(**{**ctx.__dict__, "blobs": DiesAfterTheKeysFile(storage.Client())})
        with pytest.raises(Crash):
            write_shard(crashing.for_invocation(), job_id, 1)
        await_lease_lapsed(env, job_id, shard=1, collection=config.jobs_collection)
        outcomes = []
        for _ in range(4):  # the rest of the chain, one link at a time, as its messages would come
            ready = [s.index for s in ctx.jobs.shards(job_id) if s.state.value == "SUCCEEDED"]
            outcomes += [write_shard(ctx.for_invocation(), job_id, index) for index in ready]
        assert outcomes == ["written", "written", "written_and_finished"]
    links = shard_docs(env, job_id, config.jobs_collection)
    assert [(s["request_count"], s["succeeded"], s["continues"], s["results_from"]) for s in links] == [
        (10, 3, None, 0), (7, 3, 0, 3), (4, 3, 0, 6), (1, 1, 0, 9)]
    event = events.event_for(job_id)
    assert event["status"] == "SUCCEEDED" and len(event["output"]["embeddings"]) == 4
    assert sorted(read_vectors(event)) == sorted(f"doc-{i}" for i in range(10)), "no item lost or doubled"
    assert len(events.drain(2)) == 1
