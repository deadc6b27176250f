"""The use cases (submit, poll, complete, cancel) end to end over in-memory fakes of the ports."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardOrigin, ShardState, SourceObject, job_id_for
from shared.domain.paths import JobPaths
from shared.errors import CapacityExhausted, PermanentError, TransientError
from shared.ports import ProviderState
from shared.services.batches import create_batch_for
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.finish import finish_job
from shared.services.leasing import LeaseHeld, leased, leased_shard
from shared.services.poll import tick as poll_tick
from shared.services.submit import SubmitOutcome, submit_object
from tests.fakes import Deliveries, FakeClock, make_context

EVENTS = "embedding-events"
COMPLETE = "embedding-complete"


def upload(ctx, name: str, data: bytes, metadata: dict | None = None, content_type="application/jsonl") -> SourceObject:
    info = ctx.blobs.put(f"gs://{ctx.settings.input_bucket}/{name}", data, content_type, metadata)
    return SourceObject(bucket=ctx.settings.input_bucket, name=name, generation=info.generation, size=len(data),
                        content_type=content_type, metadata=metadata or {})


def jsonl(n: int, prefix: str = "text") -> bytes:
    return b"".join(orjson.dumps({"id": f"doc-{i}", "text": f"{prefix} number {i}", "metadata": {"n": i}}) + b"\n" for i in range(n))


def shards(ctx, job_id: str):
    return list(ctx.jobs.shards(job_id))


def deliver(ctx) -> None:
    Deliveries(ctx, delivered=getattr(ctx, "_delivered", 0)).run()


class Driver:
    """Plays Pub/Sub and Cloud Scheduler over the fakes: internal messages are delivered, ticks come."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.deliveries = Deliveries(ctx)

    def deliver(self, **kwargs) -> int:
        return self.deliveries.run(**kwargs)

    def tick(self, minutes: float = 1):
        self.ctx.clock.advance(minutes=minutes)
        summary = poll_tick(self.ctx.for_invocation())
        self.deliver()
        return summary

    def until_ended(self, job_id: str, rounds: int = 15) -> None:
        for _ in range(rounds):
            self.ctx.provider.finish_all()
            self.tick(20)
            job = self.ctx.jobs.get(job_id)
            if job.terminal and job.next_poll_at is None:
                return
        raise AssertionError(f"job did not end: {self.ctx.jobs.get(job_id).state}")


@pytest.fixture
def ctx():
    return make_context(Settings(max_item_attempts=2))


@pytest.fixture
def run(ctx):
    return Driver(ctx)


# -- submit -------------------------------------------------------------------------------------


def test_submit_creates_one_job_and_one_batch_per_shard(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(5), {"task_type": "semantic_similarity", "dimensions": "256"})
    result = submit_object(ctx, source)
    assert result.outcome == SubmitOutcome.SUBMITTED
    job = ctx.jobs.get(result.job_id)
    assert job.job_id == job_id_for(source.bucket, source.name, source.generation)
    assert job.state == JobState.RUNNING and job.staging.done and job.open_shards == 1
    assert job.options.output_dimensionality == 256 and job.options.task_type == "SEMANTIC_SIMILARITY"
    assert job.counts.total == 5
    [shard] = shards(ctx, result.job_id)
    assert shard.state == ShardState.PENDING and shard.batch_name in ctx.provider.batches
    assert ctx.provider.calls["upload"] == 1 and ctx.provider.calls["create"] == 1
    assert job.estimate.input_tokens > 0 and job.estimate.cost_interactive_usd == pytest.approx(2 * job.estimate.cost_batch_usd)
    records = [orjson.loads(line) for line in ctx.blobs.read(shard.records_uri).splitlines()]
    assert records[0] == {"key": "0", "id": "doc-0", "text": "text number 0", "metadata": {"n": 0},
                          "tokens": records[0]["tokens"], "ck": records[0]["ck"]}
    assert len(records[0]["ck"]) == 64, "reuse is on: each record carries its content key"


def test_repeated_deliveries_make_one_job_and_one_batch(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    outcomes = [submit_object(ctx.for_invocation(), source).outcome for _ in range(5)]
    assert outcomes == [SubmitOutcome.SUBMITTED] + [SubmitOutcome.ALREADY_DONE] * 4
    assert len(ctx.jobs.docs) == 1 and ctx.provider.calls["create"] == 1


def test_shards_are_cut_by_tokens_rows_and_record_bytes():
    ctx = make_context(Settings(max_tokens_per_batch=20, max_requests_per_batch=3))
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(10)))
    cut = shards(ctx, result.job_id)
    assert all(s.estimated_tokens <= 20 and s.request_count <= 3 for s in cut)
    assert sum(s.request_count for s in cut) == 10 and len(cut) >= 4
    fat = b"".join(orjson.dumps({"id": f"d{i}", "text": "t", "metadata": {"blob": "x" * 10_000}}) + b"\n" for i in range(20))
    ctx = make_context(Settings(max_shard_record_bytes=25_000))
    result = submit_object(ctx, upload(ctx, "incoming/fat.jsonl", fat))
    cut = shards(ctx, result.job_id)
    assert all(s.record_bytes <= 25_000 for s in cut) and sum(s.request_count for s in cut) == 20, \
        "complete holds one shard's ids and metadata: the setting bounds it"


def test_a_crash_after_create_is_recovered_without_a_second_batch(ctx, run):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    ctx.provider.lose_answers.append(TransientError("503 after the batch was created"))
    submit_object(ctx.for_invocation(), source)  # the create is deferred: the shard stays CREATING
    assert len(ctx.provider.batches) == 1
    job_id = job_id_for(source.bucket, source.name, source.generation)
    [shard] = shards(ctx, job_id)
    assert shard.state == ShardState.CREATING and shard.uncertain_create
    run.tick(minutes=ctx.settings.lease_seconds / 60 + 1)  # due when its create should long have finished
    assert len(ctx.provider.batches) == 1, "the poller must adopt the batch, not create another"
    assert shards(ctx, job_id)[0].batch_name == next(iter(ctx.provider.batches))


@pytest.mark.parametrize("order", ["newest", "oldest", "random"])
def test_recovery_adopts_one_batch_of_an_attempt_and_cancels_the_others(ctx, run, order):
    source = upload(ctx, "incoming/a.jsonl", jsonl(3))
    ctx.provider.lose_answers.extend([TransientError("lost"), TransientError("lost again")])
    ctx.provider.list_order = order
    submit_object(ctx.for_invocation(), source)
    job_id = job_id_for(source.bucket, source.name, source.generation)
    # a second create with the same tag also reached the provider (a worker ran on after its lease)
    [shard] = shards(ctx, job_id)
    with leased_shard(ctx.for_invocation(), job_id, 0):
        pass
    ctx.provider.files["files/extra"] = ctx.provider.files[shard.input_ref]
    from shared.domain.options import JobOptions
    with pytest.raises(TransientError):
        ctx.provider.create_batch(options=JobOptions(), input_ref="files/extra", display_name=f"x {shard.tag()}", tag=shard.tag())
    assert len(ctx.provider.batches) == 2
    run.tick(minutes=ctx.settings.lease_seconds / 60 + 1)
    states = sorted(b["state"].value for b in ctx.provider.batches.values())
    assert states == ["CANCELLED", "PENDING"], "one adopted, the other cancelled"
    [shard] = shards(ctx, job_id)
    assert ctx.provider.batches[shard.batch_name]["state"] == ProviderState.PENDING


def test_a_create_refused_for_capacity_waits_without_spending_the_retry_budget(ctx, run):
    running = submit_object(ctx.for_invocation(), upload(ctx, "incoming/first.jsonl", jsonl(3)))
    ctx.provider.fail_creates(CapacityExhausted("429"))
    result = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", jsonl(3)))
    [shard] = shards(ctx, result.job_id)
    assert shard.state == ShardState.STAGED and shard.batch_attempts == 1, "waits again, attempt not spent"
    ledger = ctx.ledgers.get(shard.ledger)
    assert ledger.refusals == 1 and ledger.splits == 0 and [(h.job_id, h.shard) for h in ledger.holds.values()] == [(running.job_id, 0)]
    assert ledger.learned_limit is not None, "the ledger learned a lower limit"
    run.tick(0.5)
    assert ctx.provider.calls["create"] == 2, "no hammering: nothing freed, nothing tried"
    ctx.provider.finish_all()
    run.tick(1)  # the first batch ends: capacity frees and the waiting shard is admitted in the same tick
    assert shards(ctx, result.job_id)[0].state == ShardState.PENDING and ctx.provider.calls["create"] == 3
    run.until_ended(result.job_id)
    assert ctx.jobs.get(result.job_id).state == JobState.SUCCEEDED


def test_a_shard_refused_with_nothing_else_in_flight_is_split():
    ctx = make_context(Settings())
    run = Driver(ctx)
    ctx.provider.quota_tokens = 25  # the real cap, far below what the pipeline was told
    result = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", jsonl(12)))
    for _ in range(12):
        run.tick(2)
        ctx.provider.finish_all()
    job = ctx.jobs.get(result.job_id)
    cut = shards(ctx, result.job_id)
    assert any(s.state == ShardState.SPLIT for s in cut) and any(s.origin == ShardOrigin.SPLIT for s in cut)
    assert ctx.provider.peak_tokens <= 25
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == 12
    [event] = ctx.publisher.on(EVENTS)
    ids = [orjson.loads(line)["id"] for uri in event["output"]["embeddings"] for line in ctx.blobs.read(uri).splitlines()]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(12)), "every item embedded once, in the halves"


@pytest.mark.parametrize("model", ["gemini-embedding-001", "models/gemini-embedding-001"])
def test_the_model_is_kept_however_it_was_given(ctx, model):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(1), metadata={"model": model}))
    [batch] = ctx.provider.batches.values()
    assert batch["model"] == model and ctx.jobs.get(result.job_id).ledger == "fake~gemini-embedding-001"


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


def test_a_file_of_only_bad_records_fails_and_its_input_errors_file_lists_them(ctx):
    """A job that ends in submission (nothing usable) still joins its problems into input-errors.jsonl,
    which its event names, before the staging files go."""
    data = b'{"id": "a"}\nnot json\n{"text": ""}\n'
    result = submit_object(ctx, upload(ctx, "incoming/bad.jsonl", data))
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "FAILED" and event["counts"]["input_problems"] == 3
    assert event["input_errors"] == ctx.jobs.get(result.job_id).input_problems.uri
    lines = [orjson.loads(line) for line in ctx.blobs.read(event["input_errors"]).splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3]


def test_a_generation_replaced_before_it_was_read_fails_its_job_with_an_event(ctx):
    source = upload(ctx, "incoming/a.jsonl", jsonl(2))
    upload(ctx, "incoming/a.jsonl", jsonl(3))  # a new generation replaces it before submit runs
    result = submit_object(ctx, source)
    assert result.outcome == SubmitOutcome.FAILED
    [event] = ctx.publisher.on(EVENTS)
    assert event["error"]["code"] == "SOURCE_NOT_FOUND" and source.generation in event["error"]["message"]


def test_staging_resumes_after_its_time_budget_and_never_restages_a_shard(ctx, run):
    ctx = make_context(Settings(max_tokens_per_batch=10, stage_budget_seconds=0))
    run = Driver(ctx)
    source = upload(ctx, "incoming/a.jsonl", jsonl(9))
    first = submit_object(ctx.for_invocation(), source)
    assert first.outcome == SubmitOutcome.CONTINUED
    job = ctx.jobs.get(first.job_id)
    assert job.state == JobState.SUBMITTING and job.staging.segments == 1 and job.shard_count == 1
    written = {uri: info.generation for uri, (_, info) in ctx.blobs.objects.items() if "records-" in uri}
    run.deliver()  # the stage messages carry it on, one shard per invocation here
    job = ctx.jobs.get(first.job_id)
    assert job.staging.done and job.counts.total == 9 and sum(s.request_count for s in shards(ctx, job.job_id)) == 9
    for uri, generation in written.items():
        assert ctx.blobs.stat(uri).generation == generation, f"{uri} was staged again"
    run.until_ended(first.job_id)
    assert ctx.jobs.get(first.job_id).counts.succeeded == 9


def test_bad_records_are_skipped_and_reported_or_fail_the_file_by_option(ctx, run):
    data = jsonl(3) + b"{not json\n" + orjson.dumps({"id": "doc-0", "text": "dup"}) + b"\n"
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", data))
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.RUNNING and job.counts.total == 3 and job.counts.input_problems == 2
    assert [p["line"] for p in job.input_problems.sample] == [4, 5]
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED
    errors = ctx.blobs.read(job.input_problems.uri).decode().splitlines()
    assert len(errors) == 2

    strict = submit_object(ctx.for_invocation(), upload(ctx, "incoming/b.jsonl", data, {"on_bad_record": "fail"}))
    job = ctx.jobs.get(strict.job_id)
    assert job.state == JobState.FAILED and job.error.code == "BAD_RECORDS" and "line 4" in job.error.message
    assert ctx.provider.calls["create"] == 1, "a strict file's shards never reach the provider"
    event = ctx.publisher.on(EVENTS)[-1]
    assert "output" not in event and event["input_errors"] == job.input_problems.uri


# -- poll and complete ----------------------------------------------------------------------------


def test_a_job_runs_to_success_with_normalised_vectors_mapped_by_key(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(5)))
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == 5 and job.success_rate == 100.0
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "SUCCEEDED"
    assert event["counts"] == {"total": 5, "succeeded": 5, "failed": 0, "input_problems": 0, "reused": 0}
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
    assert not list(ctx.blobs.list(staging)), "staging is dropped once the job ended"
    assert not ctx.ledgers.get(job.ledger).holds, "every capacity hold is released"
    assert ctx.provider.calls["delete_input"] == 1 and ctx.provider.calls["delete_results"] == 1


def test_metadata_named_like_an_output_column_is_kept_apart_in_both_files(ctx, run):
    record = {"id": "doc-0", "text": "a passage", "title": "T", "metadata": {"id": "theirs", "embedding": "e", "title": "t"}}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", orjson.dumps(record) + b"\n"))
    run.until_ended(result.job_id)
    [event] = ctx.publisher.on(EVENTS)
    [row] = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["embeddings"][0]).splitlines()]
    assert (row["id"], row["metadata_id"], row["metadata_embedding"]) == ("doc-0", "theirs", "e")
    table = pq.read_table(io.BytesIO(ctx.blobs.read(event["output"]["parquet"][0]))).to_pylist()
    assert [(r["id"], r["title"], r["metadata_id"], r["metadata_embedding"], r["metadata_title"]) for r in table] == [
        ("doc-0", "T", "theirs", "e", "t")]


def test_shards_are_written_apart_and_the_last_one_finishes_the_job_once(ctx):
    ctx = make_context(Settings(max_tokens_per_batch=10))
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(6)))
    cut = shards(ctx, result.job_id)
    assert len(cut) >= 3
    ctx.provider.finish_all()
    for shard in cut:  # the poller's view: each shard's batch ended
        ctx.jobs.update_shard(result.job_id, shard.index, lambda s: (s.move_to(ShardState.SUCCEEDED, ctx.clock())))
    outcomes = [write_shard(ctx.for_invocation(), result.job_id, s.index) for s in cut]
    assert outcomes[:-1] == ["written"] * (len(cut) - 1) and outcomes[-1] == "written_and_finished"
    again = [write_shard(ctx.for_invocation(), result.job_id, s.index) for s in cut]
    assert set(again) == {"already_written"}
    assert finish_job(ctx.for_invocation(), result.job_id) == "already_ended"
    assert len(ctx.publisher.on(EVENTS)) == 1
    assert sum(1 for uri in ctx.blobs.objects if uri.endswith("manifest.json")) == 1
    assert ctx.jobs.get(result.job_id).state == JobState.SUCCEEDED


def test_failed_items_are_resubmitted_then_reported(ctx, run):
    ctx.provider.failing_texts = {"text number 1"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(4)))
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED
    cut = shards(ctx, result.job_id)
    assert [s.item_attempt for s in cut] == [1, 2] and cut[1].request_count == 1 and cut[1].origin == ShardOrigin.FOLLOW_UP
    assert (job.counts.succeeded, job.counts.failed) == (3, 1) and job.success_rate == 75.0
    [event] = ctx.publisher.on(EVENTS)
    assert event["low_success_rate"] is True
    [error] = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["errors"]).splitlines()]
    assert error["id"] == "doc-1" and error["attempts"] == 2


def test_a_follow_up_whose_create_answer_is_lost_loses_no_item(ctx, run):
    """Issue 12, defect 1: the follow-up's create reached the provider, its answer was lost."""
    ctx.provider.failing_texts = {"text number 1"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(4)))
    ctx.provider.finish_all()
    ctx.provider.lose_answers.append(TransientError("read timeout after the follow-up was created"))
    run.tick()  # the batch ends; complete writes it and creates the follow-up, whose answer is lost
    [parent, child] = shards(ctx, result.job_id)
    assert parent.state == ShardState.WRITTEN and parent.followed_up and child.state == ShardState.CREATING
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.RUNNING, "not finished with an item unaccounted for"
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED and (job.counts.succeeded, job.counts.failed, job.counts.pending) == (3, 1, 0)
    assert not [b for b in ctx.provider.batches.values() if b["state"] in (ProviderState.PENDING, ProviderState.RUNNING)]
    assert len(ctx.provider.batches) == 2, "the follow-up's batch was adopted, not made twice"


def test_an_item_that_succeeds_on_resubmission_counts_once(ctx, run):
    ctx.provider.failing_texts = {"text number 2"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(4)))
    ctx.provider.finish_all()
    run.tick()
    ctx.provider.failing_texts = set()
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and (job.counts.succeeded, job.counts.failed) == (4, 0)
    [event] = ctx.publisher.on(EVENTS)
    ids = [orjson.loads(line)["id"] for uri in event["output"]["embeddings"] for line in ctx.blobs.read(uri).splitlines()]
    assert sorted(ids) == [f"doc-{i}" for i in range(4)]


def test_a_shard_whose_results_cannot_be_read_is_abandoned_not_retried_forever(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.unreadable_results = PermanentError("inline results carry no keys")
    run.until_ended(result.job_id)
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.FAILED and "results unreadable: inline results carry no keys" in job.error.message
    assert job.counts.failed == 2


def test_a_batch_the_provider_fails_is_retried_then_abandoned():
    ctx = make_context(Settings(max_batch_attempts=2))
    run = Driver(ctx)
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    for _ in range(2):
        ctx.provider.finish_all(ProviderState.EXPIRED)
        run.tick()
    assert ctx.provider.calls["create"] == 2
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.FAILED and job.error.code == "EXPIRED"
    [event] = ctx.publisher.on(EVENTS)
    assert event["counts"]["failed"] == 2 and "output" not in event


def test_a_job_past_its_deadline_stops_its_batches_and_ends(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    batch = shards(ctx, result.job_id)[0].batch_name
    run.tick(60 * ctx.settings.job_deadline_hours + 1)
    assert ctx.provider.batches[batch]["state"] == ProviderState.CANCELLED
    job = ctx.jobs.get(result.job_id)
    assert job.terminal and job.error.code == "DEADLINE_EXCEEDED"


def test_no_follow_up_is_made_past_the_deadline(ctx, run):
    ctx.provider.failing_texts = {"text number 1"}
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(3)))
    ctx.provider.finish_all()
    ctx.clock.advance(hours=ctx.settings.job_deadline_hours + 1)
    [shard] = shards(ctx, result.job_id)
    ctx.jobs.update_shard(result.job_id, 0, lambda s: s.move_to(ShardState.SUCCEEDED, ctx.clock()))
    write_shard(ctx.for_invocation(), result.job_id, shard.index)
    assert len(shards(ctx, result.job_id)) == 1 and ctx.jobs.get(result.job_id).state == JobState.PARTIALLY_SUCCEEDED


def test_a_job_whose_results_can_never_be_written_fails_a_day_past_its_deadline(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.finish_all()
    ctx.provider.unreadable_results = TransientError("storage down")
    with pytest.raises(TransientError):
        run.tick()
    assert ctx.jobs.get(result.job_id).state == JobState.RUNNING
    run.deliveries.delivered = len(ctx.publisher.messages)  # the write keeps failing: complete never manages
    for minutes in (60 * ctx.settings.job_deadline_hours, 60 * 12, 60 * 13):
        with contextlib.suppress(TransientError):  # ready results are kept past the deadline, for a while
            run.tick(minutes)
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] in ("FAILED", "CANCELLED") and event["error"]["code"] == "DEADLINE_EXCEEDED"


def test_a_lost_event_is_published_by_the_poller(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.provider.finish_all()
    ctx.publisher.fail_next = None
    publish = ctx.publisher.publish

    def events_down(topic, data, attributes):
        if topic == EVENTS:
            raise TransientError("Pub/Sub unavailable")
        return publish(topic, data, attributes)

    ctx.publisher.publish = events_down
    with pytest.raises(TransientError):
        run.tick()
    job = ctx.jobs.get(result.job_id)
    assert job.state == JobState.SUCCEEDED and job.event_published_at is None
    ctx.publisher.publish = publish
    run.tick()
    assert len(ctx.publisher.on(EVENTS)) == 1
    assert run.tick(60).due_jobs == 0, "an ended job with its event published is never due again"


# -- cancel and leases ----------------------------------------------------------------------------


def test_cancel_stops_batches_and_announces_once(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    batch = shards(ctx, result.job_id)[0].batch_name
    first = cancel_job(ctx.for_invocation(), result.job_id)
    second = cancel_job(ctx.for_invocation(), result.job_id)
    assert first.cancelled and second.cancelled and second.message.startswith("the job already ended")
    assert ctx.provider.batches[batch]["state"] == ProviderState.CANCELLED
    [event] = ctx.publisher.on(EVENTS)
    assert event["status"] == "CANCELLED" and event["error"]["code"] == "CANCELLED"
    assert not ctx.ledgers.get(ctx.jobs.get(result.job_id).ledger).holds


def test_cancel_resolves_a_create_whose_answer_was_lost(ctx):
    """Issue 12, defect 3: the batch made by a create whose answer was lost is found and cancelled."""
    ctx.provider.lose_answers.append(TransientError("answer lost"))
    result = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", jsonl(2)))
    [shard] = shards(ctx, result.job_id)
    assert shard.state == ShardState.CREATING and len(ctx.provider.batches) == 1
    ctx.clock.advance(seconds=ctx.settings.lease_seconds + 1)
    assert cancel_job(ctx.for_invocation(), result.job_id).cancelled
    [batch] = ctx.provider.batches.values()
    assert batch["state"] == ProviderState.CANCELLED, "the billed batch was left running"


def test_a_creator_that_outlived_its_lease_cancels_what_it_made(ctx):
    """Issue 12, defect 2: a worker runs on after its lease lapsed and another took the shard over."""
    source = upload(ctx, "incoming/a.jsonl", jsonl(2))
    ctx.provider.lose_answers.append(TransientError("lost"))
    result = submit_object(ctx.for_invocation(), source)  # shard 0 is CREATING, its first batch made
    slow = ctx.for_invocation()
    create = ctx.provider.create_batch

    def while_asleep(**request):
        batch = create(**request)
        ctx.clock.advance(seconds=ctx.settings.lease_seconds + 1)  # the slow worker's lease lapses here...
        create_batch_for(ctx.for_invocation(), result.job_id, 0)  # ...and a redelivery takes the shard over
        return batch

    ctx.provider.lose_answers.clear()
    ctx.jobs.update_shard(result.job_id, 0, lambda s: setattr(s, "create_started_at", None))  # nothing to find
    ctx.provider.batches.clear()
    ctx.provider.create_batch = while_asleep
    with pytest.raises(TransientError):
        create_batch_for(slow, result.job_id, 0)
    ctx.provider.create_batch = create
    live = [n for n, b in ctx.provider.batches.items() if b["state"] == ProviderState.PENDING]
    assert len(live) == 1 and shards(ctx, result.job_id)[0].batch_name == live[0], \
        "the slow worker must cancel the batch it made after losing the shard"


def test_a_create_never_starts_without_room_in_the_lease():
    ctx = make_context(Settings(lease_seconds=60, gemini_timeout_seconds=60))
    result = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", jsonl(2)))
    assert ctx.provider.calls.get("create") is None
    assert shards(ctx, result.job_id)[0].state == ShardState.CREATING


def test_a_submission_cancelled_half_way_stops_the_batches_it_created():
    ctx = make_context(Settings(max_tokens_per_batch=10))
    source = upload(ctx, "incoming/a.jsonl", jsonl(4))
    create = ctx.provider.create_batch

    def cancelled_after_the_first(**request):
        batch = create(**request)
        assert not cancel_job(ctx.for_invocation(), job_id).cancelled  # submit holds the job: requested only
        return batch

    job_id = job_id_for(source.bucket, source.name, source.generation)
    ctx.provider.create_batch = cancelled_after_the_first
    submit_object(ctx.for_invocation(), source)
    ctx.provider.create_batch = create
    assert ctx.provider.calls["create"] == 1, "no create after the cancel request"
    Driver(ctx).tick()
    assert ctx.jobs.get(job_id).state == JobState.CANCELLED
    assert all(b["state"] == ProviderState.CANCELLED for b in ctx.provider.batches.values())


def test_cancel_of_a_busy_job_is_carried_out_by_the_poller(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    other = ctx.for_invocation()
    with leased(other, result.job_id) as held:
        assert not cancel_job(ctx.for_invocation(), result.job_id).cancelled
        held.next_poll_at = ctx.clock()  # the holder's own save must not undo the cancel's poll time
        from shared.services.leasing import save
        save(other, held)
    assert ctx.jobs.get(result.job_id).cancel_requested
    run.tick()
    assert ctx.jobs.get(result.job_id).state == JobState.CANCELLED


def test_a_poll_that_only_refreshes_costs_one_read_and_one_write(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    ctx.clock.advance(minutes=1)
    reads, writes = ctx.jobs.reads, ctx.jobs.writes
    summary = run.tick(0)
    assert summary.due_shards == 1 and (ctx.jobs.reads - reads, ctx.jobs.writes - writes) == (1, 1)
    [shard] = shards(ctx, result.job_id)
    assert shard.state == ShardState.PENDING and shard.next_poll_at > ctx.clock() and shard.lease_owner is None
    ctx.provider.progress(shard.batch_name, done=1)
    run.tick()
    assert shards(ctx, result.job_id)[0].succeeded == 1


def test_a_shard_written_during_an_unleased_poll_keeps_that_write(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    get_batch = ctx.provider.get_batch

    def cancel_meanwhile(name):  # another worker moves the shard while the poller asks the provider
        ctx.jobs.update_shard(result.job_id, 0, lambda s: setattr(s, "priority", 9))
        return get_batch(name)

    ctx.provider.get_batch = cancel_meanwhile
    ctx.provider.progress(shards(ctx, result.job_id)[0].batch_name, done=1)
    run.tick()
    ctx.provider.get_batch = get_batch
    [shard] = shards(ctx, result.job_id)
    assert shard.priority == 9 and shard.succeeded == 0, "the poller wrote over a newer revision"


def test_the_next_poll_comes_at_the_batches_estimated_end(ctx, run):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2000)))
    [shard] = shards(ctx, result.job_id)
    ctx.clock.advance(seconds=30)
    ctx.provider.progress(shard.batch_name, done=1800)  # 1,800 of 2,000 in 30 s: 3.3 s left
    run.tick(0)
    left = (shards(ctx, result.job_id)[0].next_poll_at - ctx.clock()).total_seconds()
    assert 3 <= left <= 4, f"{left} s, not the estimated end (the size alone says 10 s)"


def test_a_held_lease_keeps_other_workers_out_until_it_expires():
    clock = FakeClock()
    ctx = make_context(clock=clock)
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    holder = ctx.for_invocation()
    with leased(holder, result.job_id):
        with pytest.raises(LeaseHeld), leased(ctx.for_invocation(), result.job_id):
            pass
        clock.advance(seconds=ctx.settings.lease_seconds + 1)
        with leased(ctx.for_invocation(), result.job_id) as job:
            assert job.job_id == result.job_id


# -- bounds -----------------------------------------------------------------------------------------


def test_the_job_document_stays_small_whatever_the_input():
    """Issue 12, defect 4: 8 records with 200 KB ids made a 1.6 MB job document."""
    ctx = make_context(Settings(max_record_bytes=4 * 1024 * 1024, max_tokens_per_batch=10))
    huge = "i" * 200_000
    data = b"".join(orjson.dumps({"id": huge + str(i % 2), "text": "t"}) + b"\n" for i in range(8))  # duplicates
    data += b"".join(orjson.dumps({"id": huge + str(i), "text": "word " * 10}) + b"\n" for i in range(8, 40))
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", data, {"display_name": "d" * 128}))
    job = ctx.jobs.get(result.job_id)
    assert job.counts.input_problems == 6 and job.shard_count >= 8
    assert ctx.jobs.size_of(result.job_id) < 64 * 1024


def test_leases_and_saves_merge_only_what_changed(ctx):
    result = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(2)))
    worker = ctx.for_invocation()
    with leased(worker, result.job_id) as job:
        ctx.jobs.update(result.job_id, lambda tx: setattr(tx.job, "cancel_requested", True))
        job.poll_failures = 3
        from shared.services.leasing import save
        save(worker, job)
    stored = ctx.jobs.get(result.job_id)
    assert stored.cancel_requested and stored.poll_failures == 3


def test_a_rate_limited_create_waits_as_asked_without_splitting():
    ctx = make_context(Settings())
    run = Driver(ctx)
    ctx.provider.fail_creates(CapacityExhausted("429 with Retry-After", retry_after=30))
    result = submit_object(ctx.for_invocation(), upload(ctx, "incoming/b.jsonl", jsonl(4)))
    [shard] = shards(ctx, result.job_id)
    ledger = ctx.ledgers.get(shard.ledger)
    assert shard.state == ShardState.STAGED and ledger.splits == 0 and ledger.learned_limit is None
    run.tick(0.25)
    assert shards(ctx, result.job_id)[0].state == ShardState.STAGED, "not before the Retry-After"
    run.tick(0.5)
    assert shards(ctx, result.job_id)[0].state == ShardState.PENDING


def test_shards_that_end_before_staging_does_leave_the_job_to_the_stager_to_finish():
    """Each shard's batch ends and is written before the next part of the input is staged: the last
    checkpoint finds nothing open, so the stager itself finishes the job (no wait for the poller)."""
    from shared.services.complete import complete_message
    from shared.services.poll import poll_shard, poll_work
    from shared.services.submit import resume_submission

    ctx = make_context(Settings(max_tokens_per_batch=10, stage_budget_seconds=0))
    first = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", jsonl(4)))
    assert first.outcome == SubmitOutcome.CONTINUED
    seen, stage = 0, None
    for _ in range(30):
        for topic, data, _ in ctx.publisher.messages[seen:]:
            payload = orjson.loads(data)
            if topic == ctx.settings.poll_topic:
                poll_work(ctx.for_invocation(), payload)
            elif topic == ctx.settings.complete_topic:
                complete_message(ctx.for_invocation(), payload["job_id"], payload.get("shard"))
            elif topic == ctx.settings.stage_topic:
                stage = payload
        seen = len(ctx.publisher.messages)
        ctx.provider.finish_all()
        for shard in shards(ctx, first.job_id):
            if shard.state == ShardState.PENDING:
                poll_shard(ctx.for_invocation(), shard)
        if ctx.jobs.get(first.job_id).open_shards == 0 and stage is not None:
            resume_submission(ctx.for_invocation(), stage["job_id"])  # only now the next part is staged
            stage = None
        if ctx.jobs.get(first.job_id).terminal:
            break
    job = ctx.jobs.get(first.job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == 4 and len(ctx.publisher.on(EVENTS)) == 1
