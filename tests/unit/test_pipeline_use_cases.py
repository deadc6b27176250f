"""The use cases (submit, poll, complete, cancel) end to end over in-memory fakes of the ports."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardMode, ShardState, SourceObject, job_id_for
from shared.domain.paths import JobPaths
from shared.errors import PermanentError, TransientError
from shared.ports import ProviderState
from shared.services.cancel import cancel_job
from shared.services.complete import complete_job
from shared.services.leasing import LeaseHeld, leased
from shared.services.poll import poll_due_jobs
from shared.services.submit import SubmitOutcome, submit_object
from tests.fakes import FakeClock, make_context

EVENTS = "embedding-events"
COMPLETE = "embedding-complete"


def upload(ctx, name: str, data: bytes, metadata: dict | None = None, content_type="application/jsonl") -> SourceObject:
    info = ctx.blobs.put(f"gs://{ctx.settings.input_bucket}/{name}", data, content_type, metadata)
    return SourceObject(bucket=ctx.settings.input_bucket, name=name, generation=info.generation, size=len(data),
                        content_type=content_type, metadata=metadata or {})


def jsonl(n: int, prefix: str = "text") -> bytes:
    return b"".join(orjson.dumps({"id": f"doc-{i}", "text": f"{prefix} number {i}", "metadata": {"n": i}}) + b"\n" for i in range(n))


def run_until_ended(ctx, job_id: str, rounds: int = 10) -> None:
    """Play scheduler and complete: finish batches, poll, deliver complete messages, until the job ends."""
    for _ in range(rounds):
        ctx.provider.finish_all()
        ctx.clock.advance(minutes=20)
        poll_due_jobs(ctx)
        for message in ctx.publisher.on(COMPLETE):
            complete_job(ctx.for_invocation(), message["job_id"])
        ctx.publisher.messages = [m for m in ctx.publisher.messages if m[0] != COMPLETE]
        if ctx.jobs.get(job_id).terminal:
            return
    raise AssertionError(f"job did not end: {ctx.jobs.get(job_id).state}")


def tick(ctx, minutes: float = 1):
    """One scheduler tick, a little later."""
    ctx.clock.advance(minutes=minutes)
    return poll_due_jobs(ctx)


@pytest.fixture
def ctx():
    return make_context(Settings(max_item_attempts=2))


# -- submit -------------------------------------------------------------------------------------


def test_submit_creates_one_job_and_one_batch_per_shard(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(5), {"task_type": "semantic_similarity", "dimensions": "256"})
    result = submit_object(ctx, source)
    assert result.outcome == SubmitOutcome.SUBMITTED
    job = ctx.jobs.get(result.job_id)
    assert job.job_id == job_id_for(source.bucket, source.name, source.generation)
    assert job.state == JobState.RUNNING
    assert job.options.output_dimensionality == 256 and job.options.task_type == "SEMANTIC_SIMILARITY"
    assert job.counts.total == 5 and len(job.shards) == 1
    assert job.shards[0].mode == ShardMode.FILE, "responses files key every line: the default for every shard"
    assert ctx.provider.calls["upload"] == 1
    assert job.estimate.input_tokens > 0 and job.estimate.cost_interactive_usd == pytest.approx(2 * job.estimate.cost_batch_usd)
    assert ctx.provider.calls["create"] == 1
    assert job.shards[0].batch_name in ctx.provider.batches


def test_repeated_deliveries_make_one_job_and_one_batch(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    outcomes = [submit_object(ctx.for_invocation(), source).outcome for _ in range(5)]
    assert outcomes == [SubmitOutcome.SUBMITTED] + [SubmitOutcome.ALREADY_DONE] * 4
    assert len(ctx.jobs.docs) == 1 and ctx.provider.calls["create"] == 1


def test_a_crash_after_create_is_recovered_without_a_second_batch(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    ctx.provider.crash_after_create = TransientError("connection reset after the batch was created")
    with pytest.raises(TransientError):
        submit_object(ctx.for_invocation(), source)
    assert len(ctx.provider.batches) == 1
    job = next(iter(ctx.jobs.docs))
    assert ctx.jobs.get(job).shards[0].state == ShardState.CREATING
    assert submit_object(ctx.for_invocation(), source).outcome == SubmitOutcome.SUBMITTED
    assert len(ctx.provider.batches) == 1, "the redelivery must adopt the batch, not create another"
    assert ctx.jobs.get(job).shards[0].batch_name == next(iter(ctx.provider.batches))


def test_a_refused_create_is_retried_by_the_next_delivery(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    ctx.provider.fail_creates(TransientError("429 RESOURCE_EXHAUSTED"))
    with pytest.raises(TransientError):
        submit_object(ctx.for_invocation(), source)
    assert submit_object(ctx.for_invocation(), source).outcome == SubmitOutcome.SUBMITTED
    assert len(ctx.provider.batches) == 1


@pytest.mark.parametrize("model", ["gemini-embedding-001", "models/gemini-embedding-001"])
def test_requests_name_the_model_as_the_api_does_however_it_was_given(ctx, model):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(1), metadata={"model": model}))
    [batch] = ctx.provider.batches.values()
    assert batch["requests"][0]["request"]["model"] == "models/gemini-embedding-001", result


def test_shards_by_count_and_file_mode_above_the_inline_limit():
    ctx = make_context(Settings(max_requests_per_batch=3, inline_max_requests=2))
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(7)))
    job = ctx.jobs.get(result.job_id)
    assert [s.request_count for s in job.shards] == [3, 3, 1]
    assert [s.mode for s in job.shards] == [ShardMode.FILE, ShardMode.FILE, ShardMode.INLINE]
    assert ctx.provider.calls["upload"] == 2 and ctx.provider.calls["create"] == 3
    uploaded = b"".join(ctx.provider.files.values())
    assert uploaded.count(b'"key"') == 6


@pytest.mark.parametrize(("name", "reason"), [
    ("other/a.jsonl", "outside the input prefix"),
    ("incoming/folder/", "a folder placeholder"),
])
def test_objects_outside_scope_are_ignored(ctx, name, reason):
    result = submit_object(ctx, upload(ctx, name, b""))
    assert result.outcome == SubmitOutcome.IGNORED and reason in result.reason
    assert not ctx.jobs.docs


def test_the_pipelines_own_outputs_never_trigger_it():
    ctx = make_context(Settings(input_bucket="shared", output_bucket="shared", input_prefix="", output_prefix="out/"))
    result = submit_object(ctx, upload(ctx, "out/x/1/embeddings-00000.jsonl", b"{}"))
    assert result.outcome == SubmitOutcome.IGNORED and "output" in result.reason


def test_an_invalid_option_fails_the_job_with_an_event_naming_it(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2), {"dimensions": "5000"}))
    assert result.outcome == SubmitOutcome.FAILED
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.FAILED and job.error.code == "INVALID_OPTION"
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "FAILED" and "output_dimensionality" in event["error"]["message"]
    assert "128" in event["error"]["message"] and ctx.provider.calls.get("create") is None


def test_an_empty_object_fails_with_a_clear_error(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/empty.txt", b"", content_type="text/plain"))
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "FAILED" and event["error"]["code"] == "EMPTY_INPUT"
    assert ctx.jobs.get(result.job_id).event_published_at is not None


def test_a_generation_replaced_before_it_was_read_fails_its_job_with_an_event(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(2))
    upload(ctx, "incoming/a.jsonl", jsonl(3))  # a new generation replaces it before submit runs
    result = submit_object(ctx, source)
    assert result.outcome == SubmitOutcome.FAILED
    [event] = ctx.publisher.on(EVENTS)
    assert event["error"]["code"] == "SOURCE_NOT_FOUND" and source.generation in event["error"]["message"]


def test_a_submission_that_never_completes_fails_at_the_deadline(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(2))
    ctx.provider.fail_creates(*[TransientError("429")] * 50)
    for _ in range(3):
        with pytest.raises(TransientError):
            submit_object(ctx.for_invocation(), source)
    tick(ctx, 60 * ctx.settings.job_deadline_hours + 1)
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "FAILED" and event["error"]["code"] == "DEADLINE_EXCEEDED"


def test_bad_records_are_skipped_and_reported_or_fail_the_file_by_option(ctx):
    data = jsonl(3) + b"{not json\n" + orjson.dumps({"id": "doc-0", "text": "dup"}) + b"\n"
    job = ctx.jobs.get(submit_object(ctx, upload(ctx, "incoming/a.jsonl", data)).job_id)
    assert job.state == JobState.RUNNING and job.counts.total == 3 and job.counts.input_problems == 2
    assert [p["line"] for p in job.input_problems.sample] == [4, 5]
    errors = ctx.blobs.read(job.input_problems.uri).decode().splitlines()
    assert len(errors) == 2

    strict = submit_object(ctx, upload(ctx, "incoming/b.jsonl", data, {"on_bad_record": "fail"}))
    job = ctx.jobs.get(strict.job_id)
    assert job.state == JobState.FAILED and job.error.code == "BAD_RECORDS" and "line 4" in job.error.message
    [event] = ctx.publisher.on(EVENTS)
    assert "output" not in event and event["input_errors"] == job.input_problems.uri


# -- poll and complete ----------------------------------------------------------------------------


def test_a_job_runs_to_success_with_normalised_vectors_mapped_by_key(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(5)))
    run_until_ended(ctx, result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == 5 and job.success_rate == 100.0
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "SUCCEEDED" and event["counts"] == {"total": 5, "succeeded": 5, "failed": 0, "input_problems": 0}
    assert event["output"]["manifest"].endswith("manifest.json")
    rows = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["embeddings"][0]).splitlines()]
    assert sorted(r["id"] for r in rows) == [f"doc-{i}" for i in range(5)]
    for row in rows:
        assert len(row["embedding"]) == 768
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert row["n"] == int(row["id"].split("-")[1]), "metadata follows its own id, not a position"
    table = pq.read_table(io.BytesIO(ctx.blobs.read(event["output"]["parquet"][0])))
    assert table.num_rows == 5 and table.schema.field("embedding").type.list_size == 768
    manifest = orjson.loads(ctx.blobs.read(event["output"]["manifest"]))
    assert manifest["status"] == "SUCCEEDED" and manifest["files"]["embeddings"][0]["rows"] == 5
    staging = JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix).staging
    assert staging.startswith(f"gs://{ctx.settings.output_bucket}/{ctx.settings.output_prefix}_staging/")
    assert not list(ctx.blobs.list(staging)), "staging is dropped once the job ended"


def test_metadata_named_like_an_output_column_is_kept_apart_in_both_files(ctx):
    record = {"id": "doc-0", "text": "a passage", "title": "T", "metadata": {"id": "theirs", "embedding": "e", "title": "t"}}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", orjson.dumps(record) + b"\n"))
    run_until_ended(ctx, result.job_id)
    [event] = ctx.publisher.on(EVENTS)
    [row] = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["embeddings"][0]).splitlines()]
    assert (row["id"], row["metadata_id"], row["metadata_embedding"]) == ("doc-0", "theirs", "e")
    table = pq.read_table(io.BytesIO(ctx.blobs.read(event["output"]["parquet"][0]))).to_pylist()
    assert [(r["id"], r["title"], r["metadata_id"], r["metadata_embedding"], r["metadata_title"]) for r in table] == [
        ("doc-0", "T", "theirs", "e", "t")]


def test_complete_twice_gives_one_manifest_and_one_event(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(3)))
    ctx.provider.finish_all()
    tick(ctx)
    [message] = ctx.publisher.on(COMPLETE)
    outcomes = [complete_job(ctx.for_invocation(), message["job_id"]) for _ in range(3)]
    assert outcomes == ["succeeded", "already_ended", "already_ended"]
    assert len(ctx.publisher.on(EVENTS)) == 1
    assert sum(1 for uri in ctx.blobs.objects if uri.endswith("manifest.json")) == 1
    assert ctx.jobs.get(result.job_id).state == JobState.SUCCEEDED


def test_failed_items_are_resubmitted_then_reported(ctx):
    ctx.provider.failing_texts = {"text number 1"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(4)))
    run_until_ended(ctx, result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED
    assert [s.item_attempt for s in job.shards] == [1, 2] and job.shards[1].request_count == 1
    assert (job.counts.succeeded, job.counts.failed) == (3, 1) and job.success_rate == 75.0
    [event] = ctx.publisher.on(EVENTS)
    assert event["low_success_rate"] is True
    [error] = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["errors"]).splitlines()]
    assert error["id"] == "doc-1" and error["attempts"] == 2


def test_an_item_that_succeeds_on_resubmission_counts_once(ctx):
    ctx.provider.failing_texts = {"text number 2"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(4)))
    ctx.provider.finish_all()
    tick(ctx)
    complete_job(ctx.for_invocation(), result.job_id)
    ctx.provider.failing_texts = set()
    run_until_ended(ctx, result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and (job.counts.succeeded, job.counts.failed) == (4, 0)
    [event] = ctx.publisher.on(EVENTS)
    ids = [orjson.loads(line)["id"] for uri in event["output"]["embeddings"] for line in ctx.blobs.read(uri).splitlines()]
    assert sorted(ids) == [f"doc-{i}" for i in range(4)]


def test_a_shard_whose_results_cannot_be_read_is_abandoned_not_retried_forever(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.unreadable_results = PermanentError("inline results carry no keys")
    run_until_ended(ctx, result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.FAILED and "results unreadable: inline results carry no keys" in job.error.message
    assert job.counts.failed == 2


def test_a_batch_the_provider_fails_is_retried_then_abandoned():
    ctx = make_context(Settings(max_batch_attempts=2))
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    for _ in range(2):
        ctx.provider.finish_all(ProviderState.EXPIRED)
        tick(ctx)
    assert ctx.provider.calls["create"] == 2
    [message] = ctx.publisher.on(COMPLETE)
    complete_job(ctx.for_invocation(), message["job_id"])
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.FAILED and job.error.code == "EXPIRED"
    [event] = ctx.publisher.on(EVENTS)
    assert event["counts"]["failed"] == 2 and "output" not in event


def test_a_job_past_its_deadline_stops_its_batches_and_ends(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.clock.advance(hours=ctx.settings.job_deadline_hours + 1)
    poll_due_jobs(ctx)
    batch = ctx.jobs.get(result.job_id).shards[0].batch_name
    assert ctx.provider.batches[batch]["state"] == ProviderState.CANCELLED
    [message] = ctx.publisher.on(COMPLETE)
    complete_job(ctx.for_invocation(), message["job_id"])
    assert ctx.jobs.get(result.job_id).error.code == "DEADLINE_EXCEEDED"


def test_a_job_whose_results_can_never_be_written_fails_a_day_past_its_deadline(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.finish_all()
    tick(ctx)
    assert ctx.jobs.get(result.job_id).state == JobState.COMPLETING  # and complete never manages
    tick(ctx, 60 * ctx.settings.job_deadline_hours)
    assert ctx.jobs.get(result.job_id).state == JobState.COMPLETING, "handed over again, not failed yet"
    tick(ctx, 60 * 25)
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "FAILED" and event["error"]["code"] == "COMPLETION_FAILED"


def test_a_lost_event_is_published_by_the_poller(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.finish_all()
    tick(ctx)
    ctx.publisher.fail_next = TransientError("Pub/Sub unavailable")
    with pytest.raises(TransientError):
        complete_job(ctx.for_invocation(), result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and job.event_published_at is None
    summary = tick(ctx)
    assert summary.events_published == 1 and len(ctx.publisher.on(EVENTS)) == 1
    assert tick(ctx, 60).due == 0, "an ended job with its event published is never due again"


# -- cancel and leases ----------------------------------------------------------------------------


def test_cancel_stops_batches_and_announces_once(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    first = cancel_job(ctx.for_invocation(), result.job_id)
    second = cancel_job(ctx.for_invocation(), result.job_id)
    assert first.cancelled and second.cancelled and second.message.startswith("the job already ended")
    batch = ctx.jobs.get(result.job_id).shards[0].batch_name
    assert ctx.provider.batches[batch]["state"] == ProviderState.CANCELLED
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "CANCELLED" and event["error"]["code"] == "CANCELLED"


def test_a_submission_cancelled_half_way_stops_the_batches_it_created():
    ctx = make_context(Settings(max_requests_per_batch=2))
    source = upload(ctx, "incoming/a.jsonl", jsonl(4))
    create = ctx.provider.create_batch

    def second_fails(**request):  # shard 0's batch is made, shard 1's create is refused for now
        if ctx.provider.batches:
            raise TransientError("429 RESOURCE_EXHAUSTED")
        return create(**request)

    ctx.provider.create_batch = second_fails
    with pytest.raises(TransientError):
        submit_object(ctx.for_invocation(), source)
    job_id = job_id_for(source.bucket, source.name, source.generation)
    [created] = [shard.batch_name for shard in ctx.jobs.get(job_id).shards if shard.batch_name]
    ctx.jobs.update(job_id, lambda job: setattr(job, "cancel_requested", True))
    assert submit_object(ctx.for_invocation(), source).reason == "cancelled"
    assert ctx.jobs.get(job_id).state == JobState.CANCELLED
    assert ctx.provider.batches[created]["state"] == ProviderState.CANCELLED, "the created batch runs on"


def test_cancel_of_a_busy_job_is_carried_out_by_the_poller(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    other = ctx.for_invocation()
    with leased(other, result.job_id):
        assert not cancel_job(ctx.for_invocation(), result.job_id).cancelled
    tick(ctx)
    assert ctx.jobs.get(result.job_id).state == JobState.CANCELLED


def test_a_poll_that_only_refreshes_costs_one_write_and_no_read_beyond_the_query(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    reads, writes = ctx.jobs.reads, ctx.jobs.writes
    summary = tick(ctx, minutes=1)
    assert (summary.polled, ctx.jobs.reads - reads, ctx.jobs.writes - writes) == (1, 1, 1)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.RUNNING and job.next_poll_at > ctx.clock() and job.lease_owner is None
    assert summary.progressed == 0, "the batch did not move"
    ctx.provider.progress(job.shards[0].batch_name, done=1)
    assert tick(ctx).progressed == 1


def test_a_job_written_during_an_unleased_poll_keeps_that_write(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    get_batch = ctx.provider.get_batch

    def cancel_meanwhile(name):  # an operator's cancel request lands while the poller asks the provider
        ctx.jobs.update(result.job_id, lambda job: setattr(job, "cancel_requested", True))
        return get_batch(name)

    ctx.provider.get_batch = cancel_meanwhile
    summary = tick(ctx)
    ctx.provider.get_batch = get_batch
    assert (summary.polled, summary.skipped_leased) == (0, 1)
    assert ctx.jobs.get(result.job_id).cancel_requested
    tick(ctx)
    assert ctx.jobs.get(result.job_id).state == JobState.CANCELLED


def test_the_next_poll_comes_at_the_batches_estimated_end(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2000)))
    [shard] = ctx.jobs.get(result.job_id).shards
    ctx.clock.advance(seconds=30)
    ctx.provider.progress(shard.batch_name, done=1800)  # 1,800 of 2,000 in 30 s: 3.3 s left
    poll_due_jobs(ctx)
    left = (ctx.jobs.get(result.job_id).next_poll_at - ctx.clock()).total_seconds()
    assert 3 <= left <= 4, f"{left} s, not the estimated end (the size alone says 10 s)"


def test_a_held_lease_keeps_other_workers_out_until_it_expires():
    clock = FakeClock()
    ctx = make_context(clock=clock)
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    holder = ctx.for_invocation()
    with leased(holder, result.job_id):
        with pytest.raises(LeaseHeld), leased(ctx.for_invocation(), result.job_id):
            pass
        clock.advance(minutes=1)
        summary = poll_due_jobs(ctx)
        assert (summary.due, summary.polled, summary.skipped_leased) == (1, 0, 1)
        clock.advance(seconds=ctx.settings.lease_seconds + 1)
        with leased(ctx.for_invocation(), result.job_id) as job:
            assert job.job_id == result.job_id
