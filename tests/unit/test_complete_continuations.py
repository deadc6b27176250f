"""A batch larger than one `complete` invocation may write (`complete_max_rows`) is written by a chain of
continuation shards, over the fakes: every item exactly once, the same bytes whoever writes a shard and
however often, missing and failed items reported once, the batch's results dropped once, at the chain's
end, and a job stopped mid-chain still ends with its event."""

from __future__ import annotations

import orjson
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardOrigin, ShardState
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.finish import paths_of
from shared.services.output import write_shard_output
from shared.services.submit import submit_object
from tests.fakes import make_context
from tests.unit.test_pipeline_use_cases import EVENTS, Driver, jsonl, upload

ROWS = 3  # complete_max_rows: 10 items make a chain of 4 shards (3, 3, 3, 1)


@pytest.fixture
def ctx():
    return make_context(Settings(complete_max_rows=ROWS, max_item_attempts=2))


def ids_written(ctx, event: dict) -> list[str]:
    return [orjson.loads(line)["id"] for uri in event["output"]["embeddings"] for line in ctx.blobs.read(uri).splitlines()]


def chain(ctx, job_id: str):
    return [s for s in ctx.jobs.shards(job_id) if s.origin == ShardOrigin.INPUT]


def ended_batch(ctx, name: str, n: int = 10):
    """A job of `n` items in one batch, ended SUCCEEDED at the provider (not yet seen by the pipeline)."""
    job_id = submit_object(ctx, upload(ctx, name, jsonl(n))).job_id
    [shard] = ctx.jobs.shards(job_id)
    ctx.provider.finish_all()
    ctx.jobs.update_shard(job_id, shard.index, lambda s: s.move_to(ShardState.SUCCEEDED, ctx.clock()))
    return job_id


def test_a_batch_larger_than_one_invocation_is_written_by_a_chain_every_item_once(ctx):
    run = Driver(ctx)
    job_id = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(10))).job_id
    run.until_ended(job_id)

    links = chain(ctx, job_id)
    assert [s.request_count for s in links] == [10, 7, 4, 1]
    assert [(s.continues, s.results_from) for s in links] == [(None, 0), (0, 3), (0, 6), (0, 9)]
    assert [s.succeeded for s in links] == [3, 3, 3, 1] and {s.state for s in links} == {ShardState.WRITTEN}
    assert len({s.batch_name for s in links}) == 1 and ctx.provider.calls["create"] == 1
    assert ctx.provider.calls["delete_results"] == 1, "the results are dropped once, at the chain's end"
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED and (job.counts.succeeded, job.counts.failed) == (10, 0)
    [event] = ctx.publisher.on(EVENTS)
    assert sorted(ids_written(ctx, event)) == sorted(f"doc-{i}" for i in range(10))
    assert not ctx.ledgers.get(links[0].ledger).holds, "the batch's capacity is released"


def test_every_write_of_a_shard_is_the_same_bytes_and_its_message_repeated_does_nothing(ctx):
    job_id = ended_batch(ctx, "incoming/a.jsonl")
    job = ctx.jobs.get(job_id)
    shard = ctx.jobs.get_shard(job_id, 0)
    paths = paths_of(ctx, job)

    def files() -> dict[str, bytes]:
        return {uri: data for uri, data in ((u, ctx.blobs.read(u)) for u in list(ctx.blobs.objects))
                if "/embeddings-" in uri or "failed-" in uri or "written-" in uri}

    first = write_shard_output(ctx, paths, shard, 768, reuse=False, max_rows=ROWS)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"  # a second worker of the same shard
    written = files()
    again = write_shard_output(ctx, paths, shard, 768, reuse=False, max_rows=ROWS)  # one running late
    assert (first.consumed, first.keys) == (again.consumed, again.keys) and files() == written
    assert ctx.blobs.read(paths.written_keys(0)).decode().split() == sorted(first.keys, key=int)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "already_written"
    assert len(chain(ctx, job_id)) == 2, "one continuation, however often the shard is written"


def test_a_missing_result_is_reported_once_by_the_chains_last_shard(ctx):
    ctx.provider.missing_texts = {"text number 0"}  # the fake answers in reverse: doc-0's result would be last
    run = Driver(ctx)
    job_id = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(10))).job_id
    ctx.provider.missing_texts = {"text number 0"}
    run.until_ended(job_id)
    job = ctx.jobs.get(job_id)
    assert (job.counts.succeeded, job.counts.failed) == (9, 1) and job.state == JobState.PARTIALLY_SUCCEEDED
    [event] = ctx.publisher.on(EVENTS)
    errors = [orjson.loads(line) for line in ctx.blobs.read(event["output"]["errors"]).splitlines()]
    assert [(e["id"], e["code"]) for e in errors] == [("doc-0", "MISSING_RESULT")]
    assert sorted(ids_written(ctx, event)) == sorted(f"doc-{i}" for i in range(1, 10))


def test_items_failed_in_the_middle_of_a_chain_are_tried_again_and_counted_once(ctx):
    ctx.provider.failing_texts = {"text number 8"}  # in the chain's first shard (results come in reverse)
    run = Driver(ctx)
    job_id = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(10))).job_id
    ctx.provider.finish_all()
    run.tick()
    ctx.provider.failing_texts = set()
    run.until_ended(job_id)
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED and (job.counts.succeeded, job.counts.failed) == (10, 0)
    follow_ups = [s for s in ctx.jobs.shards(job_id) if s.origin == ShardOrigin.FOLLOW_UP]
    assert [(s.parent, s.request_count) for s in follow_ups] == [(0, 1)]
    [event] = ctx.publisher.on(EVENTS)
    assert sorted(ids_written(ctx, event)) == sorted(f"doc-{i}" for i in range(10))


def test_a_job_cancelled_mid_chain_ends_with_its_event_and_drops_the_results(ctx):
    job_id = ended_batch(ctx, "incoming/a.jsonl")
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    cancel_job(ctx.for_invocation(), job_id)
    Driver(ctx).tick()
    job = ctx.jobs.get(job_id)
    assert job.terminal and job.event_published_at is not None
    [root, rest] = chain(ctx, job_id)
    assert root.state == ShardState.WRITTEN and rest.state == ShardState.ABANDONED
    assert (job.counts.succeeded, job.counts.failed) == (3, 7)
    assert ctx.provider.calls["delete_results"] == 1 and not ctx.ledgers.get(root.ledger).holds
    assert len(ctx.publisher.on(EVENTS)) == 1


def test_cached_items_beyond_one_invocation_come_back_byte_identical_through_a_chain():
    ctx = make_context(Settings(complete_max_rows=ROWS))
    run = Driver(ctx)
    first = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(10))).job_id
    run.until_ended(first)
    second = submit_object(ctx, upload(ctx, "incoming/b.jsonl", jsonl(10))).job_id
    run.until_ended(second)
    [one, two] = ctx.publisher.on(EVENTS)
    links = [s for s in ctx.jobs.shards(second) if s.origin == ShardOrigin.CACHE]
    assert [s.request_count for s in links] == [10, 7, 4, 1] and ctx.provider.calls["create"] == 1

    def vectors(event: dict) -> dict[str, bytes]:
        rows = (orjson.loads(line) for uri in event["output"]["embeddings"] for line in ctx.blobs.read(uri).splitlines())
        return {row["id"]: orjson.dumps(row["embedding"]) for row in rows}

    assert vectors(two) == vectors(one) and len(vectors(two)) == 10
    assert two["counts"]["reused"] == 10
