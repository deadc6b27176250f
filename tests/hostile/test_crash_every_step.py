"""A worker killed after each of its port calls, in turn, then the work delivered again.

Submit and complete run in this process over the stack's real services (Firestore, fake-gcs-server,
Pub/Sub, the Gemini emulator). A clean run, its port calls counted (`tests.fakes.mortal`), says how many
calls there are; then one object per k is submitted (or completed) by a worker that dies right after its
k-th call: the call completes, then nothing more happens (no lease released, no upload committed). Each
dying worker is checked to have made exactly the clean run's first k calls, so every call is a crash
point. Once the dead worker's lease lapses the work is delivered again, as Eventarc or Pub/Sub would, and
the job must end whole: one completion event (two, with one event id, only when killed between publishing
it and recording that), one provider batch per shard (attempt 1 each), every record embedded once, one
manifest listing the job's files, no staging left, and no capacity held for it in the ledger.

Every transaction of the capacity ledger is on one document per model, and the Firestore emulator stalls
two transactions that meet on a document until its lock timeout (about 10 s): so this file touches the
ledger from one thread at a time, and lets the stack's functions (one instance each) do the rest.

- Submit: objects under `manual/` (the stack's submit function ignores them) whose jobs live in the stack's
  own collection. While the workers die one after the other, and while the work is delivered again, the
  ticker is paused and the emulator holds its queue (no batch ends, so no webhook admits anything); job k
  has priority k and admission is capped at two shards, so worker k admits exactly its own two shards, as
  the clean run did. Then the stack's poller, poll workers and complete finish every job.
- Complete: jobs driven to two SUCCEEDED shards in a private jobs collection (its own ledgers and complete
  topic), then each shard's complete run in turn (`write_shard` 0, then 1, which finishes the job) by one
  worker dying after call k of that sequence, then both run again, and the poller's look at due jobs
  (`poll_job`) for what only it finishes (staging left by a worker that died after the event).
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import pytest
from google.cloud import pubsub_v1, storage

from infra.local.processes import wait_until
from shared.bootstrap import build_context
from shared.config import Settings
from shared.domain.jobs import SourceObject, job_id_for
from shared.errors import TransientError
from shared.ingest import estimate_tokens
from shared.services.batches import CREATE_SLACK_SECONDS
from shared.services.complete import write_shard
from shared.services.context import Context
from shared.services.poll import poll_job, poll_shard
from shared.services.reconcile import reconcile_ledger
from shared.services.submit import SubmitOutcome, submit_object
from tests.fakes import Crash, mortal
from tests.hostile.hostile_helpers import (
    await_events,
    batches_per_job,
    emulator_batches,
    is_due,
    job_doc,
    lease_lapsed,
    ledger_holds,
    paths_of,
    shard_docs,
    staging_left,
)
from tests.integration.pipeline_helpers import EventSubscription, jsonl_records, read_gs, read_vectors

pytestmark = pytest.mark.integration

TEXTS = [f"passage {i} about {topic}" for i, topic in enumerate(["rivers", "chess", "tea", "trains"])]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]
_TOKENS = [estimate_tokens(text) for text in TEXTS]
#: Two records per shard: the first two fit, a third does not.
SHARD_TOKENS = max(_TOKENS[0] + _TOKENS[1], _TOKENS[2] + _TOKENS[3])
assert sum(_TOKENS[:3]) > SHARD_TOKENS
GEMINI_TIMEOUT_SECONDS = 5.0
#: A create starts only while the shard's lease has room for the whole call (its timeout plus
#: CREATE_SLACK_SECONDS): the lease of the workers that create, with a margin for a loaded machine.
CREATE_LEASE_SECONDS = GEMINI_TIMEOUT_SECONDS + CREATE_SLACK_SECONDS + 5
#: Complete makes no create: its workers' leases (which a rerun waits out) can be short.
COMPLETE_LEASE_SECONDS = 8.0
PARALLEL = 4
#: Batches in flight at once, under the stack's concurrent-batches limit (100).
BATCHES_AT_ONCE = 80
OUTPUT_FILES = ["changes.jsonl", "embeddings-00000.jsonl", "embeddings-00000.parquet", "embeddings-00001.jsonl",
                "embeddings-00001.parquet", "index.jsonl", "manifest.json"]
PARQUET_FILES = ["embeddings-00000.parquet", "embeddings-00001.parquet"]


def manual_context(lease_seconds: float, **settings) -> Context:
    """A context over the stack's services for inputs under `manual/` (ignored by the stack's submit
    function), with 2-shard jobs whose every record goes to the provider (no reuse of the same texts'
    vectors: each job must make its own batches)."""
    return build_context(Settings(input_prefix="manual/", max_tokens_per_batch=SHARD_TOKENS, lease_seconds=lease_seconds,
                                  reuse_embeddings=False,
                                  gemini_timeout_seconds=GEMINI_TIMEOUT_SECONDS, **settings))


def land(env: dict[str, str], name: str, priority: int = 0) -> SourceObject:
    blob = storage.Client().bucket(env["INPUT_BUCKET"]).blob(f"manual/crash/{name}.jsonl")
    blob.metadata = {"priority": str(priority)}
    blob.upload_from_string(jsonl_records(TEXTS), content_type="application/jsonl")
    blob.reload()
    return SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation), size=blob.size,
                        content_type=blob.content_type, metadata=blob.metadata)


def job_of(source: SourceObject) -> str:
    return job_id_for(source.bucket, source.name, source.generation)


def in_parallel(work: Callable, items: list) -> list:
    """For work that touches no ledger."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(work, items))


def once_free(what: str, leases: Callable[[], list[dict]], work: Callable[[], object]) -> object:
    """Run `work` once the dead worker's leases (on the documents `leases` reads) have lapsed, and again
    after an error a retry may cure (another lease held, a store too busy), as a redelivery would be."""
    result: list[object] = []

    def attempt() -> bool:
        if not all(lease_lapsed(doc) for doc in leases()):
            return False
        try:
            result.append(work())
        except TransientError:
            return False
        return True

    wait_until(attempt, 3 * CREATE_LEASE_SECONDS, 0.3, f"{what} to be free")
    return result[0]


def settled(read: Callable[[], dict], timeout: float) -> dict:
    """`read()` once it is empty, or as it is at the deadline."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not read(), timeout, 0.5, "nothing")
    return read()


def die_after(k: int, calls: list[str], work: Callable[[Context], object], ctx: Context) -> None:
    """Run `work` with a worker dying after its k-th port call; it must have made the clean run's first k."""
    worker, life = mortal(ctx.for_invocation(), k)
    with pytest.raises(Crash):
        work(worker)
    assert life.calls == calls[:k], f"worker {k} took another path than the clean run: {life.calls}"


def check_job_ended_whole(env: dict[str, str], job_id: str, received: list[dict], batches: int, *,
                          events_allowed: int = 1, collection: str | None = None) -> None:
    job = job_doc(env, job_id, collection)
    assert 1 <= len(received) <= events_allowed, f"{len(received)} completion events"
    assert {e["event_id"] for e in received} == {job["event_id"]}, "a repeated event must keep its event_id"
    event = received[0]
    assert event["status"] == job["state"] == "SUCCEEDED", (job["state"], job.get("error"))
    assert event["counts"] == {"total": 4, "succeeded": 4, "failed": 0, "input_problems": 0, "reused": 0}
    assert sorted(read_vectors(event)) == IDS, "every record embedded, once"
    shards = shard_docs(env, job_id, collection)
    assert [(s["state"], s["batch_attempts"]) for s in shards] == [("WRITTEN", 1)] * 2, shards
    assert batches == 2, f"{batches} provider batches for 2 shards"
    prefix = paths_of(env, job).prefix.removeprefix(f"gs://{env['OUTPUT_BUCKET']}/")
    files = sorted(b.name.removeprefix(prefix) for b in storage.Client().list_blobs(env["OUTPUT_BUCKET"], prefix=prefix))
    assert files == OUTPUT_FILES, files
    manifest = orjson.loads(read_gs(event["output"]["manifest"]))
    assert [f["uri"] for f in manifest["files"]["embeddings"]] == event["output"]["embeddings"]
    assert [f["uri"].rsplit("/", 1)[-1] for f in manifest["files"]["parquet"]] == PARQUET_FILES
    assert not staging_left(env, job), "staging files left after the event"


# -- submit ------------------------------------------------------------------------------------------------


def test_submit_killed_after_each_port_call_then_redelivered(clean_stack, gemini_emulator, events) -> None:
    env = clean_stack.env
    ctx = manual_context(CREATE_LEASE_SECONDS, admit_max_per_tick=2)
    with clean_stack.ticker_paused():
        gemini_emulator.set_faults({"hold_queue": True})
        probe = land(env, "submit-probe")
        counted, life = mortal(ctx.for_invocation())
        assert submit_object(counted, probe).outcome == SubmitOutcome.SUBMITTED
        calls = list(life.calls)
        assert calls.count("provider.create_batch") == 2, calls
        ks = list(range(1, len(calls) + 1))
        sources = in_parallel(lambda k: land(env, f"submit-dies-after-{k:02d}", priority=k), ks)
        for k, source in zip(ks, sources, strict=True):  # one at a time: worker k admits its own shards only
            die_after(k, calls, lambda worker, s=source: submit_object(worker, s), ctx)
        states = [job_doc(env, job_of(s))["state"] for s in sources]
        assert states[0] == "SUBMITTING" and states[-1] == "RUNNING", states
        outcomes = [once_free(f"job {job_of(s)}", lambda s=s: [job_doc(env, job_of(s))],
                              lambda s=s: submit_object(ctx.for_invocation(), s).outcome) for s in sources]
        assert set(outcomes) <= {SubmitOutcome.SUBMITTED, SubmitOutcome.ALREADY_DONE}, outcomes
    gemini_emulator.clear_faults()

    job_ids = [job_of(s) for s in [probe, *sources]]
    received = await_events(events, job_ids, 240)
    held = settled(lambda: ledger_holds(env, job_ids), 60)  # a shard's release may follow its job's event
    # Killed between a reservation and the shard's record of it: the hold names no shard's reservation, so
    # only the tick's reconciliation frees it (once older than a lease; these workers' leases are short).
    reserved_then_died = {k for k in ks[:-1] if calls[k - 1] == "ledgers.update" and calls[k] == "jobs.update_shard"}
    assert {job_ids.index(j) for j in held} <= reserved_then_died, {
        f"killed after call {job_ids.index(j)}": holders for j, holders in held.items()}
    for key in ctx.ledgers.list_keys():
        while reconcile_ledger(ctx.for_invocation(), key):
            pass
    held = ledger_holds(env, job_ids)
    assert not held, {f"still held after reconciliation, killed after call {job_ids.index(j)}": holders
                      for j, holders in held.items()}
    batches = batches_per_job(env)
    for k, job_id in enumerate(job_ids):
        try:
            check_job_ended_whole(env, job_id, received[job_id], batches[job_id])
        except AssertionError as exc:
            where = f"call {k} ({calls[k - 1]})" if k else "(the clean run)"
            raise AssertionError(f"submit killed after {where}: {exc}") from exc


# -- complete ------------------------------------------------------------------------------------------


@dataclass
class CompleteCrashes:
    calls: list[str]  # the port calls of a clean complete of both shards
    job_ids: list[str]  # [the clean run's job, then the job whose worker died after call k, for each k]
    received: dict[str, list[dict]]
    batches: Counter
    held_after_rerun: dict[str, list[str]]  # job id -> holders the ledger still had once the job ended
    held_after_reconcile: dict[str, list[str]]
    collection: str

    def died_after(self, k: int) -> str:
        return f"call {k} ({self.calls[k - 1]})" if k else "(the clean run)"

    def released_later(self) -> set[int]:
        """The crash points between a shard's WRITTEN transaction and its capacity's release (the
        design leaves what a worker dying there held to reconciliation)."""
        window = set()
        for end, call in enumerate(self.calls):
            if call == "ledgers.update":
                start = max(i for i in range(end) if self.calls[i] == "jobs.update")
                window.update(range(start + 1, end + 1))
        return window


@pytest.fixture(scope="module")
def complete_crashes(stack) -> Iterator[CompleteCrashes]:
    stack.reset()
    env = stack.env
    project = env["GOOGLE_CLOUD_PROJECT"]
    suffix = uuid.uuid4().hex[:8]
    topic = f"complete-{suffix}"  # not routed to the complete function: this test delivers
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(project, topic))
    events = EventSubscription(project, env["EVENTS_TOPIC"])
    private = {"jobs_collection": f"hostile_jobs_{suffix}", "ledgers_collection": f"hostile_ledgers_{suffix}",
               "complete_topic": topic}
    creator = manual_context(CREATE_LEASE_SECONDS, **private)
    completer = manual_context(COMPLETE_LEASE_SECONDS, **private)
    collection = private["jobs_collection"]

    def to_succeeded(names: list[str]) -> list[str]:
        """Jobs whose two shards' batches succeeded, each shard SUCCEEDED and handed to complete; by groups
        that fit the ledger's 100 concurrent batches (a batch counts until its end is polled)."""
        job_ids = []
        for start in range(0, len(names), BATCHES_AT_ONCE // 2):
            sources = in_parallel(lambda name: land(env, name), names[start:start + BATCHES_AT_ONCE // 2])
            assert {submit_object(creator.for_invocation(), s).outcome for s in sources} == {SubmitOutcome.SUBMITTED}
            group = [job_of(s) for s in sources]
            wait_until(lambda g=group: all(b.state.value == "BATCH_STATE_SUCCEEDED" for b in emulator_batches(env))
                       and sum(batches_per_job(env)[j] for j in g) == 2 * len(g), 120, 0.3, "the batches")
            shards = [shard for job_id in group for shard in creator.jobs.shards(job_id)]
            assert {poll_shard(creator.for_invocation(), s) for s in shards} == {"handed_to_complete"}
            job_ids += group
        return job_ids

    def complete_both(worker: Context, job_id: str) -> list[str]:
        return [write_shard(worker, job_id, index) for index in (0, 1)]

    def rerun(job_id: str) -> None:
        for index in (0, 1):
            once_free(f"shard {index} of {job_id}",
                      lambda: [job_doc(env, job_id, collection), *shard_docs(env, job_id, collection)],
                      lambda i=index: write_shard(completer.for_invocation(), job_id, i))

    def poller_looks(job_id: str) -> bool:
        """The poller's step for the job while it is due (it publishes an unannounced end, drops staging)."""
        job = completer.jobs.get(job_id)
        if job.next_poll_at is None:
            return True
        if is_due(job_doc(env, job_id, collection)) and lease_lapsed(job_doc(env, job_id, collection)):
            poll_job(completer.for_invocation(), job)
        return False

    try:
        with stack.ticker_paused():  # the stack's poller must not look at these shards (see the report)
            [probe] = to_succeeded(["complete-probe"])
            counted, life = mortal(completer.for_invocation())
            assert complete_both(counted, probe) == ["written", "written_and_finished"]
            calls = list(life.calls)
            ks = list(range(1, len(calls) + 1))
            job_ids = to_succeeded([f"complete-dies-after-{k:02d}" for k in ks])
            for k, job_id in zip(ks, job_ids, strict=True):
                die_after(k, calls, lambda w, j=job_id: complete_both(w, j), completer)
            for job_id in job_ids:
                rerun(job_id)
            for job_id in job_ids:
                wait_until(lambda j=job_id: poller_looks(j), 60, 0.3, f"job {job_id} to need no more polls")
            assert {tuple(complete_both(completer.for_invocation(), j)) for j in job_ids} == {
                ("already_written", "already_written")}
        every = [probe, *job_ids]
        received = await_events(events, every, 60)
        held = ledger_holds(env, every, private["ledgers_collection"])
        for key in completer.ledgers.list_keys():  # the tick's reconciliation, with these workers' lease
            while reconcile_ledger(completer.for_invocation(), key):
                pass
        yield CompleteCrashes(calls, every, received, batches_per_job(env), held,
                              ledger_holds(env, every, private["ledgers_collection"]), collection)
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
            check_job_ended_whole(stack.env, job_id, run.received[job_id], run.batches[job_id],
                                  events_allowed=allowed, collection=run.collection)
        except AssertionError as exc:
            raise AssertionError(f"complete killed after {run.died_after(k)}: {exc}") from exc


def test_complete_killed_after_each_port_call_holds_capacity_only_for_reconciliation(complete_crashes) -> None:
    """Once the job ended nothing is held for it, but where a worker died between a shard's WRITTEN
    transaction and its capacity's release: that hold is the tick's reconciliation's to free."""
    run = complete_crashes
    held = {k: run.held_after_rerun[job_id] for k, job_id in enumerate(run.job_ids) if job_id in run.held_after_rerun}
    assert set(held) <= run.released_later(), {run.died_after(k): holders for k, holders in held.items()}


def test_reconciliation_frees_what_a_dead_complete_left_held(complete_crashes) -> None:
    run = complete_crashes
    left = {run.died_after(k): run.held_after_reconcile[job_id] for k, job_id in enumerate(run.job_ids)
            if job_id in run.held_after_reconcile}
    assert not left, f"still held after reconciliation: {left}"
