"""The adapters against the real emulators, through the official clients: the guarantees the ports state."""

from __future__ import annotations

import gzip
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1, storage

from shared.adapters.firestore_jobs import FirestoreJobRepository, FirestoreLedgerRepository
from shared.adapters.gcs_blobs import GcsBlobStore
from shared.adapters.pubsub_publisher import PubSubPublisher
from shared.domain.jobs import Job, JobState, Shard, ShardState, SourceObject
from shared.domain.ledger import Admission
from shared.errors import NotFound, PermanentError
from tests.integration.pipeline_helpers import EventSubscription

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def a_job(job_id: str, **fields) -> Job:
    return Job(job_id=job_id, source=SourceObject(bucket="b", name="n", generation="1"),
               created_at=fields.pop("created_at", NOW), updated_at=NOW, **fields)


@pytest.fixture
def repo(stack):
    return FirestoreJobRepository(firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"]), f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def ledgers(stack):
    return FirestoreLedgerRepository(firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"]), f"l-{uuid.uuid4().hex[:8]}")


def a_shard(job_id: str, index: int, **fields) -> Shard:
    return Shard(job_id=job_id, index=index, records_uri="gs://o/r", request_count=fields.pop("request_count", 10),
                 created_at=fields.pop("created_at", NOW), updated_at=NOW, **fields)


@pytest.fixture
def blobs(stack):
    return GcsBlobStore(storage.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"]))


def test_concurrent_creates_of_one_job_create_it_once(repo):
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(repo.create(a_job("job-1"))[1])) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_updates_are_atomic_read_modify_writes(repo):
    repo.create(a_job("job-2"))

    def bump(tx) -> None:
        tx.job.poll_failures += 1

    threads = [threading.Thread(target=lambda: repo.update("job-2", bump)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert repo.get("job-2").poll_failures == 4
    with pytest.raises(NotFound):
        repo.update("nope", bump)


def test_due_reads_only_jobs_whose_poll_time_passed(repo):
    repo.create(a_job("late", next_poll_at=NOW - timedelta(minutes=5)))
    repo.create(a_job("later", next_poll_at=NOW - timedelta(minutes=1)))
    repo.create(a_job("future", next_poll_at=NOW + timedelta(minutes=1)))
    repo.create(a_job("ended", state=JobState.SUCCEEDED, next_poll_at=None))
    assert [j.job_id for j in repo.due(NOW, 10)] == ["late", "later"]
    assert [j.job_id for j in repo.due(NOW, 1)] == ["late"]


def test_replace_if_unchanged_writes_only_over_the_version_it_read(repo):
    repo.create(a_job("job-3", next_poll_at=NOW))
    [first] = repo.due(NOW, 10)
    [second] = repo.due(NOW, 10)
    first.poll_failures = 1
    assert repo.replace_if_unchanged(first)
    second.cancel_requested = True
    assert not repo.replace_if_unchanged(second), "a copy read before another write must not overwrite it"
    stored = repo.get("job-3")
    assert (stored.poll_failures, stored.cancel_requested) == (1, False)
    first.poll_failures = 2  # the winner's copy carries the version it wrote
    assert repo.replace_if_unchanged(first) and repo.get("job-3").poll_failures == 2


def test_jobs_list_newest_first_by_state_with_paging(repo):
    for i in range(5):
        repo.create(a_job(f"j{i}", created_at=NOW + timedelta(seconds=i),
                          state=JobState.RUNNING if i % 2 else JobState.SUBMITTING))
    page, token = repo.list(limit=2)
    assert [j.job_id for j in page] == ["j4", "j3"] and token == "j3"
    page, token = repo.list(limit=2, after=token)
    assert [j.job_id for j in page] == ["j2", "j1"]
    running, _ = repo.list(state=JobState.RUNNING)
    assert [j.job_id for j in running] == ["j3", "j1"]


def test_a_write_interrupted_by_an_error_leaves_no_object(blobs, stack):
    uri = f"gs://{stack.env['OUTPUT_BUCKET']}/adapters/{uuid.uuid4().hex}.jsonl"
    with pytest.raises(RuntimeError), blobs.open_write(uri, "application/jsonl") as out:
        out.write(b"half a file")
        raise RuntimeError("crash")
    assert blobs.stat(uri) is None
    with blobs.open_write(uri, "application/jsonl") as out:
        out.write(b"whole\n")
    assert blobs.stat(uri).size == 6


def test_reads_return_stored_bytes_without_transcoding(blobs, stack):
    uri = f"gs://{stack.env['OUTPUT_BUCKET']}/adapters/{uuid.uuid4().hex}.txt"
    bucket = storage.Client().bucket(stack.env["OUTPUT_BUCKET"])
    blob = bucket.blob(uri.split("/", 3)[3])
    blob.content_encoding = "gzip"
    packed = gzip.compress(b"hello world")
    blob.upload_from_string(packed, content_type="text/plain")
    with blobs.open_read(uri) as stream:
        assert stream.read() == packed
    with pytest.raises(NotFound), blobs.open_read(uri + ".missing") as stream:
        stream.read()


def test_publish_returns_after_the_broker_has_the_message(stack):
    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    topic = f"t-{uuid.uuid4().hex[:8]}"
    client = pubsub_v1.PublisherClient()
    client.create_topic(name=client.topic_path(project, topic))
    subscription = EventSubscription(project, topic)
    try:
        message_id = PubSubPublisher(client, project).publish(topic, b'{"a": 1}', {"job_id": "j"})
        assert message_id
        assert subscription.wait_for(lambda attrs, data: attrs["job_id"] == "j", timeout=30) == {"a": 1}
    finally:
        subscription.close()


# -- shards, ledgers and markers ----------------------------------------------------------------------------


def with_shards(repo, job_id: str, *shards: Shard) -> None:
    repo.create(a_job(job_id))

    def add(tx) -> None:
        for shard in shards:
            tx.job.allocate_shard()
            tx.added.append(shard)

    repo.update(job_id, add)


def test_a_job_and_its_shards_change_in_one_transaction(repo):
    with_shards(repo, "job-s", a_shard("job-s", 0), a_shard("job-s", 1))
    assert repo.get("job-s").open_shards == 2 and [s.index for s in repo.shards("job-s")] == [0, 1]

    def close(tx) -> bool:
        shard = tx.shards[1]
        shard.move_to(ShardState.ABANDONED, NOW)
        return tx.job.close_shard(shard, NOW)

    tx, last = repo.update("job-s", close, shards=[1, 7])
    assert last is False and tx.shards[7] is None
    assert repo.get("job-s").counts.failed == 10 and repo.get_shard("job-s", 1).state == ShardState.ABANDONED
    assert [s.index for s in repo.shards("job-s", states=["STAGED"])] == [0]

    def fails(tx) -> None:
        tx.shards[0].move_to(ShardState.CREATING, NOW)
        tx.job.poll_failures = 9
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        repo.update("job-s", fails, shards=[0])
    assert repo.get("job-s").poll_failures == 0 and repo.get_shard("job-s", 0).state == ShardState.STAGED, \
        "an aborted transaction writes nothing"


def test_shard_queries_over_the_collection_group(repo):
    """Due shards, a ledger's queue (priority, then fair key) with its aggregates, and the shard of a batch."""
    job = f"job-q-{uuid.uuid4().hex[:6]}"
    ledger = f"fake~{uuid.uuid4().hex[:6]}"
    with_shards(repo, job,
                a_shard(job, 0, ledger=ledger, priority=0, fair_key=5.0, estimated_tokens=100),
                a_shard(job, 1, ledger=ledger, priority=1, fair_key=9.0, estimated_tokens=200),
                a_shard(job, 2, ledger=ledger, priority=0, fair_key=1.0, estimated_tokens=300),
                a_shard(job, 3, ledger=ledger, state=ShardState.PENDING, batch_name=f"batches/{job}",
                        next_poll_at=NOW - timedelta(seconds=1)))
    assert [s.index for s in repo.waiting_shards(ledger, 10)] == [1, 2, 0]
    assert repo.queue_ahead(ledger, 0, 5.0) == (2, 500)
    assert repo.queue_ahead(ledger, 1, 9.0) == (0, 0)
    assert [(s.job_id, s.index) for s in repo.due_shards(NOW, 1000) if s.job_id == job] == [(job, 3)]
    assert repo.shard_of_batch(f"batches/{job}").index == 3 and repo.shard_of_batch("batches/none") is None


def test_shard_conditional_writes_and_leases(repo):
    with_shards(repo, "job-c", a_shard("job-c", 0))
    first, second = repo.get_shard("job-c", 0), repo.get_shard("job-c", 0)
    first.priority = 5
    assert repo.replace_shard_if_unchanged(first)
    second.priority = 7
    assert not repo.replace_shard_if_unchanged(second)
    stored, result = repo.update_shard("job-c", 0, lambda s: setattr(s, "reservation", "r1") or "done")
    assert result == "done" and stored.reservation == "r1" and repo.get_shard("job-c", 0).priority == 5


def test_a_corrupt_document_is_a_permanent_error_naming_it(repo):
    repo.create(a_job("job-bad"))
    repo._ref("job-bad").update({"state": "SOMEWHERE_ELSE"})
    with pytest.raises(PermanentError) as caught:
        repo.get("job-bad")
    assert caught.value.code == "CORRUPT_DOCUMENT" and "job-bad" in caught.value.message
    with pytest.raises(PermanentError):  # not retried as contention
        repo.update("job-bad", lambda tx: None)


def test_a_document_over_firestores_size_limit_is_a_permanent_error(repo):
    repo.create(a_job("job-big"))

    def grow(tx) -> None:
        tx.job.source.metadata = {}
        tx.job.input_problems.sample = [{"message": "x" * 600_000}, {"message": "y" * 600_000}]

    with pytest.raises(PermanentError) as caught:
        repo.update("job-big", grow)
    assert caught.value.code in ("DOCUMENT_TOO_LARGE", "INVALID_ARGUMENT")


def test_ledger_updates_lose_nothing_when_sixteen_writers_race_to_create_it(ledgers):
    """Compare-and-set under contention: every writer's change lands exactly once, the creating ones too."""
    def admit(i: int) -> None:
        ledgers.update("gemini~busy", lambda book: book.admit("job", i, 10, 0, float(i), NOW))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(admit, range(16)))
    ledger = ledgers.get("gemini~busy")
    assert ledger.tokens_held == 160 and sorted(h.shard for h in ledger.holds.values()) == list(range(16))


def _retries_ran_out(message: str) -> Exception:
    return gexc.RetryError(message, gexc.ServiceUnavailable(message))


@pytest.mark.parametrize("method", ["create", "update"])
@pytest.mark.parametrize("lost", [gexc.DeadlineExceeded, gexc.FailedPrecondition, _retries_ran_out],
                         ids=["in-transit", "retry-refused", "retries-ran-out"])
@pytest.mark.parametrize("meanwhile", ["alone", "another-writer", "read-back-fails"])
def test_a_ledger_write_whose_answer_is_lost_is_applied_once(ledgers, monkeypatch, method, lost, meanwhile):
    """The write reaches Firestore, its answer does not: the call fails in transit, the client's retry of
    the applied write is refused by its own precondition, or the client's retries run out. Meanwhile
    another writer may change the ledger, or the read that would settle it may fail. The change is
    applied once, and the caller gets the reservation that landed."""
    if method == "update":
        ledgers.update("gemini~lost", lambda book: book.admit("job", 9, 10, 0, 0.0, NOW))
    real_write, real_get = getattr(firestore.DocumentReference, method), firestore.DocumentReference.get
    faults = []

    def write_then_lose_the_answer(self, *args, **kwargs):
        written = real_write(self, *args, **kwargs)
        if not faults:
            faults.append("answer lost")
            if meanwhile == "another-writer":
                monkeypatch.setattr(firestore.DocumentReference, method, real_write)
                ledgers.update("gemini~lost", lambda book: book.admit("job", 7, 10, 0, 2.0, NOW))
            raise lost("the answer was lost")
        return written

    def get_failing_once_after_the_loss(self, *args, **kwargs):
        if faults == ["answer lost"] and meanwhile == "read-back-fails":
            faults.append("read-back failed")
            raise gexc.ServiceUnavailable("read back failed")
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(firestore.DocumentReference, method, write_then_lose_the_answer)
    monkeypatch.setattr(firestore.DocumentReference, "get", get_failing_once_after_the_loss)
    _, (admitted, reservation) = ledgers.update("gemini~lost", lambda book: book.admit("job", 0, 10, 0, 1.0, NOW))
    held = ledgers.get("gemini~lost")
    assert faults == (["answer lost", "read-back failed"] if meanwhile == "read-back-fails" else ["answer lost"])
    assert admitted == Admission.ADMITTED and f"job/0#{reservation}" in held.holds
    others = ([9] if method == "update" else []) + ([7] if meanwhile == "another-writer" else [])
    assert sorted(h.shard for h in held.holds.values()) == sorted([0, *others])


def test_ledgers_update_atomically_and_are_listed(ledgers):
    threads = [threading.Thread(target=lambda i=i: ledgers.update(
        "gemini~m", lambda book, i=i: book.admit("job", i, 10, 0, float(i), NOW))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = ledgers.get("gemini~m")
    assert ledger.tokens_held == 60 and len(ledger.holds) == 6 and ledgers.list_keys() == ["gemini~m"]
    _, (again, reservation) = ledgers.update("gemini~m", lambda book: book.admit("job", 0, 10, 0, 0.0, NOW))
    assert again == Admission.ADMITTED and ledgers.get("gemini~m").holds[f"job/0#{reservation}"].shard == 0
    assert ledgers.get("gemini~m").tokens_held == 70, "a second admission of a shard is a second reservation"


def test_markers_and_batched_existence(repo):
    assert repo.marker("m") == {}
    repo.set_marker("m", {"after": "incoming/b"})
    assert repo.marker("m") == {"after": "incoming/b"}
    repo.create(a_job("job-e"))
    assert repo.exist(["job-e", "job-none"]) == {"job-e"}


def test_blob_listing_pages_by_name_and_composes(blobs, stack):
    root = f"gs://{stack.env['OUTPUT_BUCKET']}/list-{uuid.uuid4().hex[:6]}/"
    for name in ("a", "b", "c", "d"):
        blobs.write_bytes(root + name, name.encode() * 3, "text/plain")
    prefix = root[len(f"gs://{stack.env['OUTPUT_BUCKET']}/"):]
    assert [b.uri[-1] for b in blobs.list(root, limit=2)] == ["a", "b"]
    assert [b.uri[-1] for b in blobs.list(root, start_after=prefix + "b")] == ["c", "d"]
    assert all(b.updated is not None for b in blobs.list(root))
    blobs.compose([root + n for n in "abcd"], root + "all", "text/plain")
    with blobs.open_read(root + "all") as stream:
        assert stream.read() == b"aaabbbcccddd"
    with blobs.open_read(root + "all", offset=6) as stream:
        assert stream.read() == b"cccddd"
