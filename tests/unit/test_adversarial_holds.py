"""Attacks on the pipeline's reliability guarantees that it withstood, kept as tests.

Each covers what `test_pipeline_use_cases.py`, `test_state_machine_stateful.py` and `test_ledger.py` do not:
a cancel or the deadline at every moment of a job with several shards, a failing item and a create whose
answer is lost (one message delivered at a time); real threads racing over one job (finalize events,
shard writes, admission under a tight limit); and the provider listing batches in any order while a
recovery meets more than one batch of an attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardState
from shared.errors import TransientError
from shared.ports import ProviderState
from shared.services.admission import admit
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.poll import tick
from shared.services.submit import submit_object
from tests.unit.test_adversarial_world import World, clean_end, jsonl, uncounted_in_flight

#: Steps a job of four shards (one with an item failing twice) takes from upload to its clean end.
JOURNEY = 16


def journey_world() -> tuple[World, str]:
    """Four shards cut from five records, staged one per invocation, one item that always fails, and the
    first create's answer lost (its batch exists; the worker does not know)."""
    world = World(Settings(max_tokens_per_batch=10, stage_budget_seconds=0, max_item_attempts=2,
                           job_deadline_hours=2))
    world.provider.failing_texts = {"text number 1"}
    world.provider.lose_answers = [TransientError("503 after the create reached the provider")]
    return world, world.submit(world.upload("incoming/a.jsonl", jsonl(5)))


@pytest.mark.parametrize("moment", range(JOURNEY + 2))
def test_a_cancel_at_any_moment_ends_the_job_cancelled_or_finished_once_and_clean(moment):
    world, job_id = journey_world()
    for _ in range(moment):
        world.step()
    ended_before = world.job(job_id).state if world.job(job_id).terminal else None
    world.provider.cancel_errors = [TransientError("cancel: 503")]  # the first try of the cancel fails
    cancel_job(world.ctx.for_invocation(), job_id)
    world.settle(rounds=8)
    job = world.job(job_id)
    assert clean_end(world, job_id) == []
    assert job.state == (ended_before or JobState.CANCELLED)
    assert all(e["status"] == job.state.value for e in world.events(job_id))


@pytest.mark.parametrize("moment", range(JOURNEY + 2))
def test_the_deadline_at_any_moment_ends_the_job_once_and_clean(moment):
    world, job_id = journey_world()
    for _ in range(moment):
        world.step()
    world.clock.advance(hours=3)  # past the deadline, whatever was happening
    world.settle(rounds=8, finish=False)  # batches still running are the deadline's to stop
    assert clean_end(world, job_id) == []
    job = world.job(job_id)
    assert job.state in (JobState.FAILED, JobState.PARTIALLY_SUCCEEDED, JobState.SUCCEEDED)


# -- real threads --------------------------------------------------------------------------------------


def retried(work: Callable[[], object], seconds: float = 20.0) -> None:
    """Deliver until it succeeds, as Pub/Sub redelivers a message whose handler raised a retryable error."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            work()
            return
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def in_threads(*works: Callable[[], object]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(works))

    def run(work: Callable[[], object]) -> None:
        try:
            start.wait()
            retried(work)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_one_finalize_event_delivered_eight_times_at_once_makes_one_job_and_one_batch_per_shard():
    world = World(Settings(max_tokens_per_batch=10))
    source = world.upload("incoming/a.jsonl", jsonl(6))
    in_threads(*[lambda: submit_object(world.ctx.for_invocation(), source)] * 8)
    [job_id] = world.ctx.jobs.docs
    shards = world.shards(job_id)
    assert world.job(job_id).counts.total == 6 and sum(s.request_count for s in shards) == 6
    assert world.provider.calls["create"] == len(shards) == len(world.provider.batches)
    world.settle()
    assert clean_end(world, job_id) == [] and world.job(job_id).state == JobState.SUCCEEDED


def test_shards_written_at_once_twice_each_finish_the_job_once_with_every_item_once():
    world = World(Settings(max_tokens_per_batch=10))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(12)))
    world.provider.finish_all()
    world.tick(deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)  # the batches are seen ended; their writes not delivered
    world.drop_pending()
    shards = [s.index for s in world.shards(job_id)]
    assert len(shards) >= 4 and all(s.state == ShardState.SUCCEEDED for s in world.shards(job_id))
    in_threads(*[lambda i=i: write_shard(world.ctx.for_invocation(), job_id, i) for i in shards * 2])
    world.settle(rounds=2)
    job = world.job(job_id)
    assert clean_end(world, job_id) == [] and job.state == JobState.SUCCEEDED
    assert len(world.events(job_id)) == 1
    ids = [line for s in world.shards(job_id) for line in world.ctx.blobs.read(s.output.embeddings.uri).splitlines()]
    assert len(ids) == job.counts.succeeded == 12


def test_admission_racing_in_threads_never_passes_the_limit_nor_leaves_a_batch_uncounted():
    world = World(Settings(max_tokens_per_batch=10, enqueued_tokens_limit=30, stage_budget_seconds=10_000))
    jobs = [world.submit(world.upload(f"incoming/{n}.jsonl", jsonl(6, f"job {n} text")),
                         world.ctx.for_invocation()) for n in range(4)]
    key = world.job(jobs[0]).ledger
    for _ in range(6):
        world.provider.finish_all()
        in_threads(*[lambda: admit(world.ctx.for_invocation(), key, inline=True)] * 4)
        ledger = world.ctx.ledgers.get(key)
        held = sum(world.provider.batches[s.batch_name]["tokens"] for j in jobs for s in world.shards(j)
                   if s.batch_name and world.provider.batches[s.batch_name]["state"] in (ProviderState.PENDING,))
        assert ledger.tokens_held <= 30 and held <= 30
        assert all(uncounted_in_flight(world, j) == [] for j in jobs)
        world.tick(deliver=True)
    world.settle()
    for job_id in jobs:
        assert clean_end(world, job_id) == []


@pytest.mark.parametrize("trial", range(5))
def test_writes_a_cancel_and_a_tick_racing_in_threads_end_the_job_once_with_one_status(trial):
    world = World(Settings(max_tokens_per_batch=10))
    world.provider.failing_texts = {"text number 3"}
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(8)))
    world.provider.finish_all()
    world.tick(deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)
    world.drop_pending()
    works = [lambda i=s.index: write_shard(world.ctx.for_invocation(), job_id, i) for s in world.shards(job_id)]
    works += [lambda: cancel_job(world.ctx.for_invocation(), job_id), lambda: tick(world.ctx.for_invocation())]
    in_threads(*works)
    world.settle(rounds=4)
    job = world.job(job_id)
    assert clean_end(world, job_id) == []
    assert {e["status"] for e in world.events(job_id)} == {job.state.value}
    assert job.state in (JobState.CANCELLED, JobState.PARTIALLY_SUCCEEDED)


@pytest.mark.parametrize("order", ["newest", "oldest", "random"])
def test_a_recovery_meeting_a_finished_and_a_running_batch_keeps_the_finished_one(order):
    """Two batches of one attempt (a lost answer, then a zombie's create): one already SUCCEEDED, one still
    running, listed in any order. The finished one is adopted (its results are read), the other cancelled."""
    world = World()
    world.provider.list_order = order
    world.provider.lose_answers = [TransientError("lost"), TransientError("lost again")]
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(3)))
    [shard] = world.shards(job_id)
    world.provider.files["files/extra"] = world.provider.files[shard.input_ref]
    from shared.domain.options import JobOptions
    with pytest.raises(TransientError):
        world.provider.create_batch(options=JobOptions(), input_ref="files/extra", display_name=f"x {shard.tag()}",
                                    tag=shard.tag())
    first = next(iter(world.provider.batches))
    world.provider.batches[first]["state"] = ProviderState.SUCCEEDED
    world.tick(minutes=world.ctx.settings.lease_seconds / 60 + 1)
    assert world.shards(job_id)[0].batch_name == first
    assert world.live_batches() == []
    world.settle()
    assert clean_end(world, job_id) == [] and world.job(job_id).counts.succeeded == 3


def test_a_job_document_stays_bounded_through_many_follow_ups_and_splits():
    world = World(Settings(max_tokens_per_batch=40, max_item_attempts=4))
    world.provider.quota_tokens = 12  # splits, then single-item shards
    world.provider.failing_texts = {f"text number {i}" for i in range(0, 30, 3)}
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(30)))
    sizes = []
    for _ in range(30):
        world.provider.finish_all()
        world.tick(5)
        sizes.append(world.ctx.jobs.size_of(job_id))
    world.settle()
    job = world.job(job_id)
    assert job.shard_count > 10 and clean_end(world, job_id) == []
    assert max(sizes) - min(sizes) < 2048, "the job document grows with its shards"
    assert job.counts.failed == 10 and job.counts.succeeded == 20
    assert timedelta(0) < job.completed_at - job.created_at
