"""Round 2: attacks on the fixes of the first round's findings (reservation ids, strays, recovered ends,
upload refusals, failed submissions, strict files, the deadline's ready results, late writers).

Failing tests name a guarantee the code does not keep yet (each passes once fixed); passing ones name an
attack it withstood. Each docstring tells the interleaving and, for a break, where the code is at fault.
Moments are made exact with hooks (`Hooked`) and, where two workers must each be stopped mid-way, with a
worker frozen in a thread of its own (`Frozen`): only one of them runs at any time.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardState
from shared.domain.ledger import Admission, holder_id
from shared.errors import CapacityExhausted, TransientError
from shared.ports import ProviderState
from shared.services.admission import admit
from shared.services.batches import create_batch_for
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.finish import paths_of
from shared.services.messages import snapshot_of
from shared.services.poll import poll_work
from tests.fakes import Crash, mortal
from tests.unit.test_adversarial_world import (
    Frozen,
    Hooked,
    World,
    clean_end,
    jsonl,
    orphans,
    uncounted_in_flight,
    worker_with,
)


def lease_lapses(world: World) -> None:
    world.clock.advance(seconds=world.ctx.settings.lease_seconds + 1)


def waiting_after_a_rate_limit(world: World, n: int = 3) -> str:
    """A job whose one shard is STAGED again (its first create was rate-limited) and free to be admitted."""
    world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED", retry_after=30.0))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(n)))
    world.drop_pending()
    [shard] = world.shards(job_id)
    assert shard.state == ShardState.STAGED and not world.holds(world.job(job_id))
    world.clock.advance(seconds=60)
    return job_id


def succeeded_unwritten(world: World, n: int = 2) -> str:
    """A job whose one shard's batch SUCCEEDED, seen by the poller; its write message is not delivered."""
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(n)))
    world.provider.finish_all()
    world.tick(deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)
    world.drop_pending()
    assert world.shards(job_id)[0].state == ShardState.SUCCEEDED
    return job_id


# -- reservations --------------------------------------------------------------------------------------


def test_two_admissions_of_one_shard_crossing_never_leave_its_batch_without_a_hold():
    """ledger.py: "only a release naming [the reservation] frees it, so a worker acting late ... never frees
    capacity a batch now uses"; admission.py: "never a shard creating without capacity".

    Two admitters (two ticks, or a tick and the inline admission of a batch that just ended) read the same
    head of the queue: shard 0, STAGED. A reserves it (hold r1) and B reserves it too: `Ledger.admit` takes
    r1 for "a hold left by an earlier admission" and replaces it by r2. A marks the shard CREATING with r1
    (its create goes out); B's mark finds the shard no longer STAGED and B frees what it reserved, r2: the
    only hold the shard had. The batch runs with no hold at all, and its release (naming r1) frees nothing:
    the ledger counts nothing for it, and admits other shards into the room it really uses.

    Where: `Ledger.admit` pops any hold of the shard (`stale = self.holds.pop(key)`) though it cannot tell
    an abandoned reservation from one whose admitter is about to mark the shard."""
    world = World()
    job_id = waiting_after_a_rate_limit(world)
    key = world.job(job_id).ledger
    b = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", before=lambda *_: frozen.here()))
    frozen = Frozen(lambda: admit(b, key, inline=False))

    def b_reserves_too(result: Any, *_: Any) -> None:
        frozen.start()  # B reserved; frozen before marking the shard

    a = worker_with(world, ledgers=Hooked(world.ctx.ledgers, "update", after=b_reserves_too,
                                          when=lambda result, *_: result[1][0] == Admission.ADMITTED))
    assert admit(a, key, inline=False) == 1
    assert frozen.resume() == 0
    world.deliver()  # A's create message
    assert world.shards(job_id)[0].state == ShardState.PENDING
    assert uncounted_in_flight(world, job_id) == [], "a batch runs that the ledger does not count"


# -- creates whose answers were lost ---------------------------------------------------------------------


def test_a_create_whose_answer_is_lost_after_its_worker_lost_the_shard_is_never_left_running():
    """batches.py: "every batch the provider holds either adopted by its shard or cancelled"; "a worker that
    learns nothing of a create it may have made ... the next worker lists the provider's batches carrying
    the tag, adopts one and cancels the others".

    Worker A saves its create intent and is frozen before its create reaches the provider. Its lease
    lapses; worker B takes the shard, finds no batch by the tag, creates one and adopts it. A's create then
    lands, and its answer is lost (a 503 after the provider made the batch). A marks the shard
    `uncertain_create` so that whoever holds it looks for a second batch at the end, but that save is
    fenced by the lease A lost: it fails, `_quietly_save` swallows it. No one knows of A's batch: B's
    shard ends normally (no `uncertain_create`, no stray named), A's batch runs on and is billed, never
    read (a strayed batch A could not name, since it never got its name).

    Where: `batches.create_batch_for` (the `TransientError` branch: `_quietly_save` under a lost lease);
    unlike `_record`'s LeaseLost branch, nothing notes the uncertainty on the stored shard."""
    world = World()
    world.provider.fail_creates(TransientError("503 before anything was made"))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(2)))
    world.drop_pending()
    assert world.shards(job_id)[0].state == ShardState.CREATING
    lease_lapses(world)
    real_create = world.provider.create_batch

    def frozen_before_the_create_lands(**request: Any) -> Any:
        world.provider.create_batch = real_create
        lease_lapses(world)
        assert create_batch_for(world.ctx.for_invocation(), job_id, 0) == "created"  # B takes over
        world.provider.lose_answers = [TransientError("503 after the create reached the provider")]
        return real_create(**request)

    world.provider.create_batch = frozen_before_the_create_lands
    with pytest.raises(TransientError):
        create_batch_for(world.ctx.for_invocation(), job_id, 0)
    assert len(world.provider.batches) == 2
    world.settle(rounds=4)
    assert world.job(job_id).state == JobState.SUCCEEDED
    assert orphans(world) == [], "a batch no shard adopted ran on, billed and never read"


def test_an_input_is_never_deleted_while_a_batch_made_from_it_may_run():
    """gemini_provider.py / batches.py: "inputs are deleted when their batch ends"; `_refused`: "nothing was
    made" (by this create).

    Worker A holds shard 0 (CREATING, its input uploaded and its intent saved by an earlier try whose
    create failed) and is frozen before its create reaches the provider. Its lease lapses; worker B takes
    the shard, finds no batch by the tag and creates one from the same input (`input_ref` is on the
    shard), which it adopts. A's create is then refused (429): `_refused` deletes the shard's input first,
    and only then tries its fenced save (which fails: A lost the shard). B's batch is PENDING and its input
    file is gone: the provider fails the batch when it reads it (a wasted attempt; the last one abandons
    the shard's items).

    Where: `batches._refused` deletes `shard.input_ref` before its fenced `save_shard` (delete after the
    save, or only when the save went through)."""
    world = World()
    world.provider.fail_creates(TransientError("503 before anything was made"))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(2)))
    world.drop_pending()
    shard = world.shards(job_id)[0]
    assert shard.state == ShardState.CREATING and shard.input_ref in world.provider.files
    lease_lapses(world)
    real_create = world.provider.create_batch

    def frozen_before_the_create_lands(**request: Any) -> Any:
        world.provider.create_batch = real_create
        lease_lapses(world)
        assert create_batch_for(world.ctx.for_invocation(), job_id, 0) == "created"  # B takes over
        world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED"))
        return real_create(**request)

    world.provider.create_batch = frozen_before_the_create_lands
    with pytest.raises(TransientError):
        create_batch_for(world.ctx.for_invocation(), job_id, 0)
    adopted = world.shards(job_id)[0]
    assert adopted.state == ShardState.PENDING
    assert world.provider.batches[adopted.batch_name]["input"] in world.provider.files, \
        "the input of a PENDING batch was deleted"


# -- ends found by recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("ended", [ProviderState.SUCCEEDED, ProviderState.FAILED])
def test_a_batch_recovered_after_it_ended_ends_in_the_recovery_itself(ended):
    """batches.py `_record`: "recovered after it ended: it ends now, as a poll would have seen it" (its input
    deleted, its batch's tokens released, its write handed to `complete` or its retry queued).

    A create's answer is lost; its batch ends before the poller recovers it by its tag. The recovery adopts
    it and calls `poll.batch_ended`, whose conditional write (`replace_shard_if_unchanged`) always fails:
    the shard copy carries the revision read when the lease was taken, and `_record` has written the shard
    twice since (`leasing._adopt` copies the stored fields, not `_revision`). So `batch_ended` answers
    "skipped" and nothing of the end is done until a later poll of the shard; with the Firestore adapter
    (which clears `_revision` after a transaction write) the same call raises ValueError("... was not read
    from this repository") instead.

    Where: `leasing._adopt` (drops the stored revision) / `batches._record` (calls `batch_ended` on it)."""
    world = World()
    world.provider.lose_answers = [TransientError("503 after the create reached the provider")]
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(3)))
    world.drop_pending()
    world.provider.finish_all(ended)
    lease_lapses(world)
    before = world.shards(job_id)[0]
    assert before.state == ShardState.CREATING and before.input_ref in world.provider.files
    assert create_batch_for(world.ctx.for_invocation(), job_id, 0) == "recovered"
    hold = world.holds(world.job(job_id)).get(holder_id(job_id, 0, before.reservation or ""))
    assert before.input_ref not in world.provider.files, "the recovered batch's input is still at the provider"
    assert hold is None or hold.reservation != before.reservation or hold.tokens == 0, \
        "the ended batch's tokens are still held"
    if ended == ProviderState.SUCCEEDED:
        world.deliver()  # the write handed to `complete`, with no poll in between
        assert world.job(job_id).state == JobState.SUCCEEDED
    else:
        assert world.shards(job_id)[0].batch_attempts == 2, "the retry was not queued"


# -- results the provider keeps -----------------------------------------------------------------------------


def test_results_ready_at_the_provider_stay_counted_when_their_shard_is_abandoned():
    """ledger.py: file bytes are held "until the shard's files are deleted"; complete.py: the results'
    capacity "is free once they are gone, or when they expire if the provider keeps them".

    A shard's batch SUCCEEDED: its results file sits at the provider (Gemini will not delete `files/batch-*`:
    they expire after 48 h). The job is cancelled before the shard is written: `stop_shards` abandons it and
    `abandon_shard` releases everything the shard holds, file bytes included, without asking the provider
    to delete the results and without counting them as kept. The ledger then believes the storage free
    while the provider still holds the file for up to two days: uploads are admitted over the Files API's
    storage quota and refused (429). The same happens at the deadline's grace end and for unreadable results.

    Where: `batches.abandon_shard` -> `release_capacity` for a shard whose batch SUCCEEDED (it should go
    through `complete._drop_results`: delete, else `files_kept_until`)."""
    world = World()
    world.provider.results_deletable = False
    job_id = succeeded_unwritten(world)
    cancel_job(world.ctx.for_invocation(), job_id)
    world.settle(rounds=2)
    assert world.job(job_id).state == JobState.CANCELLED
    ledger = world.ctx.ledgers.get(world.job(job_id).ledger)
    assert ledger.kept_files, "results the provider keeps for 48 h are no longer counted"


# -- late writers ----------------------------------------------------------------------------------------------


def test_a_late_writer_leaves_no_embeddings_of_a_shard_that_was_abandoned():
    """jobs.py `Shard.abandon`: "no results of it will be written, so every item counts as failed";
    complete.py (the fix of round 1): a writer whose close did not move the shard deletes what it wrote.

    Worker A writes shard 0's results and is frozen while the provider streams them. Its lease lapses; the
    job is cancelled: `stop_shards` abandons shard 0 (its items count as failed) and the job ends CANCELLED,
    its event listing no file. A wakes up and writes `embeddings-00000.jsonl` and `.parquet` into the job's
    output prefix; its close finds the shard ABANDONED, and `_discard_late_writes` deletes only the staging
    files. The embeddings stay in the output prefix of a job whose event says none were made, for items
    counted failed (an import of the prefix loads them).

    Where: `complete._discard_late_writes` deletes the staging files only (not the shard's output files
    when the stored shard is not WRITTEN)."""
    world = World()
    job_id = succeeded_unwritten(world)

    def the_job_is_cancelled(*_: Any) -> None:
        lease_lapses(world)
        cancel_job(world.ctx.for_invocation(), job_id)
        assert world.job(job_id).state == JobState.CANCELLED

    provider = Hooked(world.provider, "iter_results", before=the_job_is_cancelled)
    assert write_shard(worker_with(world, providers={"fake": provider}), job_id, 0) == "already_written"
    world.settle(rounds=2)
    job = world.job(job_id)
    assert job.counts.failed == 2 and job.counts.succeeded == 0
    prefix = paths_of(world.ctx, job).prefix
    left = [uri for uri in world.ctx.blobs.objects if uri.startswith(prefix) and "embeddings-" in uri]
    assert left == [], f"embeddings of an abandoned shard: {left}"
    assert clean_end(world, job_id) == []


# == attacks the fixes withstood ================================================================================


def test_the_deadline_hands_a_ready_shard_whose_write_was_lost_to_complete_again():
    """The deadline keeps SUCCEEDED shards for `complete` (fix 7). Shard 0's batch succeeds and its write
    message is lost; the deadline passes and its pass stops shard 1 and leaves shard 0. The poller sees shard
    0 still unwritten, hands it over again, and the job ends PARTIALLY_SUCCEEDED with shard 0's results."""
    world = World(Settings(max_tokens_per_batch=10, job_deadline_hours=1))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(4)))
    first, _ = world.shards(job_id)
    world.provider.batches[first.batch_name]["state"] = ProviderState.SUCCEEDED
    world.tick(50, deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)
    world.drop_pending()  # shard 0's write message is lost
    world.tick(15)  # the deadline pass, and shard 0 handed over again
    world.settle(rounds=4, finish=False)
    job = world.job(job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED and job.counts.succeeded == 2
    assert clean_end(world, job_id) == []


def test_a_stray_named_on_a_shard_is_cancelled_though_the_shard_is_retried_meanwhile():
    """Strays named on the shard (fix 2) across a retry. Worker A is frozen before its create lands; B takes
    the shard over and creates the attempt's batch. A's create then lands; A finds the shard moved and
    cannot cancel its batch (503): it names it stray on the shard, due now. Meanwhile B's batch FAILS, so
    the shard is retried (a new attempt, a new tag). The poller still cancels A's batch, and the job ends
    clean on the second attempt. (A zombie whose create lands after the retry makes nothing: the attempt's
    input was deleted when its batch ended, so the provider refuses the create.)"""
    world = World()
    world.provider.fail_creates(TransientError("503 before anything was made"))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(2)))
    world.drop_pending()
    lease_lapses(world)
    real_create = world.provider.create_batch

    def frozen_before_the_create_lands(**request: Any) -> Any:
        world.provider.create_batch = real_create
        lease_lapses(world)
        assert create_batch_for(world.ctx.for_invocation(), job_id, 0) == "created"  # B
        world.provider.cancel_errors = [TransientError("cancel: 503")]
        return real_create(**request)

    world.provider.create_batch = frozen_before_the_create_lands
    with pytest.raises(TransientError):
        create_batch_for(world.ctx.for_invocation(), job_id, 0)
    shard = world.shards(job_id)[0]
    [stray] = shard.strays
    world.provider.batches[shard.batch_name]["state"] = ProviderState.FAILED
    world.tick(1)
    world.tick(1)
    assert world.shards(job_id)[0].batch_attempts == 2
    assert world.provider.batches[stray]["state"] == ProviderState.CANCELLED
    world.settle(rounds=4)
    assert world.job(job_id).state == JobState.SUCCEEDED and clean_end(world, job_id) == []


def test_a_cancel_landing_while_a_strict_file_fails_ends_the_job_once():
    """A failed submission (fix 5) crossing a cancel: the cancel request lands while the stage delivery
    holds the job and reads a strict file (on_bad_record=fail) with a bad record. The delivery fails the job
    and stops its held shards; the job ends once (FAILED: the failure was found first), with one event."""
    world = World(Settings(max_tokens_per_batch=10))
    source = world.upload("incoming/a.jsonl", jsonl(6) + b"{not json\n", {"on_bad_record": "fail"})
    source_uri = f"gs://{source.bucket}/{source.name}"

    def a_cancel_lands(uri: str, *_: Any, **__: Any) -> None:
        job_id = next(iter(world.ctx.jobs.docs))
        assert not cancel_job(world.ctx.for_invocation(), job_id).cancelled  # busy: requested only

    stager = worker_with(world, blobs=Hooked(world.ctx.blobs, "open_read", before=a_cancel_lands,
                                             when=lambda uri, *_, **__: uri == source_uri))
    job_id = world.submit(source, worker=stager)
    world.settle(rounds=3)
    job = world.job(job_id)
    assert job.state == JobState.FAILED and job.error.code == "BAD_RECORDS"
    assert clean_end(world, job_id) == [] and world.provider.batches == {}


def test_a_strict_job_cancelled_while_its_shards_are_opened_ends_cancelled_with_no_batch_left():
    """Strict files' shards opened after the whole file read clean (fix 6), crossing a cancel: the cancel
    request lands between the first and the second shard's opening. The rest is opened, admitted, and every
    creator stands down; the job ends CANCELLED with nothing running and nothing held."""
    world = World(Settings(max_tokens_per_batch=10))
    source = world.upload("incoming/a.jsonl", jsonl(6), {"on_bad_record": "fail"})

    def a_cancel_lands(job_id: str, index: int, change: Any) -> None:
        cancel_job(world.ctx.for_invocation(), job_id)

    def opening_shard_1(job_id: str, index: int, change: Any) -> bool:
        return index == 1 and world.ctx.jobs.get_shard(job_id, index).ledger == ""

    stager = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", before=a_cancel_lands,
                                            when=opening_shard_1))
    job_id = world.submit(source, worker=stager)
    world.settle(rounds=3)
    assert world.job(job_id).state == JobState.CANCELLED
    assert clean_end(world, job_id) == []


def _failed_batch(world: World) -> str:
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(4)))
    world.provider.finish_all(ProviderState.FAILED)
    return job_id


def _unwritten(world: World) -> str:
    world.provider.failing_texts = {"text number 1"}  # a follow-up shard too
    return succeeded_unwritten(world, 4)


STEPS = {
    # the poll of a FAILED batch: input deleted, capacity released, retried and re-admitted inline
    "poll_of_a_failed_batch": (_failed_batch, lambda world, worker, job_id: poll_work(
        worker, {"shards": [snapshot_of(world.shards(job_id)[0])]})),
    # a shard's write: files, close with a follow-up, results dropped, capacity released, admission
    "write_with_a_follow_up": (_unwritten, lambda world, worker, job_id: write_shard(worker, job_id, 0)),
    # a cancel of a job whose shard's results are ready
    "cancel_of_ready_results": (_unwritten, lambda world, worker, job_id: cancel_job(worker, job_id)),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_worker_killed_after_any_port_call_of_a_step_leaves_a_job_that_still_ends_clean(step):
    """Workers killed anywhere (`mortal`): for every k, the worker carrying `step` dies right after its k-th
    port call (nothing after it runs: no lease released, no message sent); the world then goes on (leases
    lapse, the poller ticks, messages are redelivered). Every job still ends once, counted and clean:
    nothing open, nothing held in the ledger, no batch running or unadopted, no staging file left."""
    setup, act = STEPS[step]
    k = 0
    while True:
        k += 1
        world = World(Settings(max_tokens_per_batch=10, max_item_attempts=2))
        job_id = setup(world)
        worker, life = mortal(world.ctx, k)
        with suppress(Crash, TransientError):  # died, or failed and will be delivered again
            act(world, worker, job_id)
        lease_lapses(world)
        world.settle(rounds=4)
        assert clean_end(world, job_id) == [], f"killed after call {k}: {life.calls[-1]}"
        if not life.dead:
            break
    assert k > 8, "the step made fewer port calls than expected"
