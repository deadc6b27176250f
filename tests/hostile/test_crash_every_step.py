"""A worker killed after each of its port calls, in turn, then the work delivered again.

Submit and complete run in this process over the stack's real services (Firestore, fake-gcs-server,
Pub/Sub, the Gemini emulator), as `manual/` inputs the running submit function leaves alone. A clean
run, its port calls counted, says how many calls there are; then one object per k is submitted (or
completed) by a worker that dies right after its k-th call (`hostile_helpers.mortal`: the call completes,
then nothing more happens: no lease released, no upload cancelled). After the dead worker's lease
lapses the work is delivered again, as Eventarc or Pub/Sub would, and the job must end as if nothing had
happened: one completion event, as many provider batches as shards, every record embedded once, one
manifest, no staging left.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from google.cloud import pubsub_v1, storage

from infra.local.processes import wait_until
from shared.bootstrap import build_context
from shared.config import Settings
from shared.domain.jobs import SourceObject, job_id_for
from shared.services.complete import complete_job
from shared.services.context import Context
from shared.services.leasing import LeaseHeld
from shared.services.poll import poll_job
from shared.services.submit import SubmitOutcome, submit_object
from tests.fakes import Crash, mortal
from tests.hostile.hostile_helpers import (
    await_events,
    batches_per_job,
    emulator_batches,
    job_doc,
    lease_lapsed,
    paths_of,
    staging_left,
    staging_objects,
)
from tests.integration.pipeline_helpers import EventSubscription, jsonl_records, read_vectors

pytestmark = pytest.mark.integration

RECORDS = 4  # 2 shards of at most 3 requests
TEXTS = [f"passage {i} about {topic}" for i, topic in enumerate(["rivers", "chess", "tea", "trains"])]
IDS = [f"doc-{i}" for i in range(RECORDS)]
LEASE_SECONDS = 2
PARALLEL = 4


def manual_context(**settings) -> Context:
    """A context over the stack's services whose inputs live under `manual/` (ignored by the stack's
    submit function), with 2-shard jobs and short leases."""
    return build_context(Settings(input_prefix="manual/", max_requests_per_batch=3, lease_seconds=LEASE_SECONDS,
                                  **settings))


def land(env: dict[str, str], name: str) -> SourceObject:
    blob = storage.Client().bucket(env["INPUT_BUCKET"]).blob(f"manual/crash/{name}.jsonl")
    blob.upload_from_string(jsonl_records(TEXTS), content_type="application/jsonl")
    blob.reload()
    return SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation), size=blob.size,
                        content_type=blob.content_type)


def job_of(source: SourceObject) -> str:
    return job_id_for(source.bucket, source.name, source.generation)


def in_parallel(work: Callable, items: list) -> list:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(work, items))


def when_free(env: dict[str, str], job_id: str, work: Callable[[], object]) -> object:
    """Run `work` once the dead worker's lease has lapsed (retrying while a lease is held, as a
    redelivery would)."""
    result: list[object] = []

    def attempt() -> bool:
        if not lease_lapsed(env, job_id):
            return False
        try:
            result.append(work())
        except LeaseHeld:
            return False
        return True

    wait_until(attempt, 60, 0.2, f"job {job_id} to be free")
    return result[0]


def check_job_ended_whole(env: dict[str, str], job_id: str, received: list[dict], events_allowed: int = 1,
                          staging: bool = True) -> None:
    job = job_doc(env, job_id)
    assert 1 <= len(received) <= events_allowed, f"{len(received)} completion events"
    assert {e["event_id"] for e in received} == {job["event_id"]}, "a repeated event must keep its event_id"
    event = received[0]
    assert event["status"] == job["state"] == "SUCCEEDED", (job["state"], job.get("error"))
    assert sorted(read_vectors(event)) == IDS, "every record embedded, once"
    assert len(job["shards"]) == 2 and all(s["batch_attempts"] == 1 for s in job["shards"])
    prefix = paths_of(env, job).prefix.removeprefix(f"gs://{env['OUTPUT_BUCKET']}/")
    files = sorted(b.name.removeprefix(prefix) for b in storage.Client().list_blobs(env["OUTPUT_BUCKET"], prefix=prefix))
    assert files == ["embeddings-00000.jsonl", "embeddings-00000.parquet", "embeddings-00001.jsonl",
                     "embeddings-00001.parquet", "manifest.json"], files
    if staging:
        assert not staging_left(env, job), "staging files left after the event"


def test_submit_killed_after_each_port_call_then_redelivered(clean_stack, events) -> None:
    env = clean_stack.env
    ctx = manual_context()
    probe = land(env, "submit-probe")
    counted, life = mortal(ctx.for_invocation())
    assert submit_object(counted, probe).outcome == SubmitOutcome.SUBMITTED
    calls = list(life.calls)
    assert "provider.create_batch" in calls and calls.count("provider.create_batch") == 2, calls

    sources = in_parallel(lambda k: land(env, f"submit-dies-after-{k}"), list(range(1, len(calls) + 1)))

    def die(k: int) -> str:
        worker, _ = mortal(ctx.for_invocation(), k)
        with pytest.raises(Crash):
            submit_object(worker, sources[k - 1])
        return job_doc(env, job_of(sources[k - 1])).get("state", "no job")

    states = in_parallel(die, list(range(1, len(calls) + 1)))
    assert states[0] == "SUBMITTING" and states[-1] == "RUNNING", states

    def redeliver(source: SourceObject) -> SubmitOutcome:
        return when_free(env, job_of(source), lambda: submit_object(ctx.for_invocation(), source).outcome)

    outcomes = in_parallel(redeliver, sources)
    assert set(outcomes) <= {SubmitOutcome.SUBMITTED, SubmitOutcome.ALREADY_DONE}, outcomes

    job_ids = [job_of(s) for s in [probe, *sources]]
    received = await_events(events, job_ids, 180)
    batches = batches_per_job(env)
    for k, job_id in enumerate(job_ids):
        died_after = calls[k - 1] if k else "(clean run)"
        try:
            check_job_ended_whole(env, job_id, received[job_id])
            assert batches[job_id] == 2, f"{batches[job_id]} provider batches for 2 shards"
        except AssertionError as exc:
            raise AssertionError(f"submit killed after call {k} ({died_after}): {exc}") from exc


@dataclass
class CompleteCrashes:
    calls: list[str]  # the port calls of a clean complete run
    job_ids: list[str]  # [the clean run's job, then the job whose worker died after call k, for each k]
    received: dict[str, list[dict]]
    batches: Counter

    def died_after(self, k: int) -> str:
        return f"call {k} ({self.calls[k - 1]})" if k else "(the clean run)"


@pytest.fixture(scope="module")
def complete_crashes(stack) -> Iterator[CompleteCrashes]:
    """Jobs driven to COMPLETING in this process (the ticker paused, a private complete topic), then
    completed by a worker dying after call k, for each k, then completed again."""
    stack.reset()
    env = stack.env
    project = env["GOOGLE_CLOUD_PROJECT"]
    topic = f"complete-{uuid.uuid4().hex[:8]}"  # not routed to the complete function: this test delivers
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, topic))
    events = EventSubscription(project, env["EVENTS_TOPIC"])
    ctx = manual_context(complete_topic=topic)

    def to_completing(names: list[str]) -> list[str]:
        sources = in_parallel(lambda name: land(env, name), names)
        for source in sources:
            assert submit_object(ctx.for_invocation(), source).outcome == SubmitOutcome.SUBMITTED
        job_ids = [job_of(s) for s in sources]
        wait_until(lambda: all(b.state.value == "BATCH_STATE_SUCCEEDED" for b in emulator_batches(env)), 120, 0.3,
                   "the batches")
        for job_id in job_ids:
            assert poll_job(ctx.for_invocation(), job_id) == "handed_to_complete"
        return job_ids

    try:
        with stack.ticker_paused():  # the stack's poller must not hand these jobs to its own complete
            [probe] = to_completing(["complete-probe"])
            counted, life = mortal(ctx.for_invocation())
            assert complete_job(counted, probe) == "succeeded"
            calls = list(life.calls)
            job_ids = to_completing([f"complete-dies-after-{k}" for k in range(1, len(calls) + 1)])

            def die(k: int) -> None:
                worker, _ = mortal(ctx.for_invocation(), k)
                with pytest.raises(Crash):
                    complete_job(worker, job_ids[k - 1])

            in_parallel(die, list(range(1, len(calls) + 1)))
            outcomes = in_parallel(
                lambda job_id: when_free(env, job_id, lambda: complete_job(ctx.for_invocation(), job_id)), job_ids)
            assert set(outcomes) <= {"succeeded", "already_ended"}, outcomes
            assert {complete_job(ctx.for_invocation(), job_id) for job_id in job_ids} == {"already_ended"}
        received = await_events(events, [probe, *job_ids], 60)
        yield CompleteCrashes(calls, [probe, *job_ids], received, batches_per_job(env))
    finally:
        events.close()
        publisher.delete_topic(topic=publisher.topic_path(project, topic))


# A worker dying while its Parquet file is open leaves pyarrow's writer to the garbage collector, whose
# close fails on the cancelled upload ("Exception ignored in ParquetWriter.__del__"): noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_complete_killed_after_each_port_call_then_rerun_ends_the_job_whole(complete_crashes, stack) -> None:
    run = complete_crashes
    publish_call = run.calls.index("publisher.publish") + 1
    for k, job_id in enumerate(run.job_ids):
        # Killed right after publishing, before recording it: the rerun publishes again, same event_id.
        allowed = 2 if k == publish_call else 1
        try:
            check_job_ended_whole(stack.env, job_id, run.received[job_id], allowed, staging=False)
            assert run.batches[job_id] == 2, f"{run.batches[job_id]} provider batches for 2 shards"
        except AssertionError as exc:
            raise AssertionError(f"complete killed after {run.died_after(k)}: {exc}") from exc


def test_complete_killed_after_each_port_call_leaves_no_staging(complete_crashes, stack) -> None:
    run = complete_crashes
    left = {run.died_after(k): len(staging_objects(stack.env, job_doc(stack.env, job_id)))
            for k, job_id in enumerate(run.job_ids)}
    assert not {where: n for where, n in left.items() if n}, "staging files left after the event"
