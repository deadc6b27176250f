"""The adapters against the real emulators, through the official clients: the guarantees the ports state."""

from __future__ import annotations

import gzip
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import firestore, pubsub_v1, storage

from shared.adapters.firestore_jobs import FirestoreJobRepository
from shared.adapters.gcs_blobs import GcsBlobStore
from shared.adapters.pubsub_publisher import PubSubPublisher
from shared.domain.jobs import Job, JobState, SourceObject
from shared.errors import NotFound
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

    def bump(job: Job) -> None:
        job.poll_failures += 1

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
