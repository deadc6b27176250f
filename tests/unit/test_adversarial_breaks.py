"""Interleavings and faults that break a guarantee the pipeline's modules claim (they fail on the code as
it is; each passes once its defect is fixed).

Each test is named after the guarantee it breaks; its docstring tells the interleaving. Moments are made
exact with hooks (`Hooked`): the callback runs inside one port call of one worker, so "meanwhile" means
"between this call and the next one of that worker", as a frozen or slow worker would see it.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from shared.config import Settings
from shared.domain.jobs import SHARD_HOLDS_TOKENS, JobState, ShardState
from shared.domain.ledger import Ledger
from shared.errors import CapacityExhausted, PermanentError, TransientError
from shared.ports import ProviderState
from shared.services.admission import admit
from shared.services.batches import create_batch_for
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.leasing import leased_shard
from shared.services.messages import snapshot_of
from shared.services.poll import poll_work
from shared.services.reconcile import reconcile_ledger
from shared.services.submit import resume_submission
from tests.fakes import Crash, firestore_size
from tests.unit.test_adversarial_world import (
    Hooked,
    World,
    clean_end,
    jsonl,
    orphans,
    uncounted_in_flight,
    worker_with,
)

FIRESTORE_MAX_DOCUMENT = 1_048_576


def lease_lapses(world: World) -> None:
    world.clock.advance(seconds=world.ctx.settings.lease_seconds + 1)


# -- the capacity ledger ---------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [None, 30.0])
def test_no_shard_is_creating_or_running_without_its_hold_when_a_429_and_an_admission_cross(retry_after):
    """admission.py: "never a shard creating without capacity"; ledger.py: held tokens bound what is in
    flight.

    Worker A admits shard 0 (hold reserved, CREATING); its create is refused with 429. `_refused` stores the
    shard STAGED first and frees the ledger's hold second. In between, worker B (a tick, or the inline
    admission of a shard that just ended) admits the queue: `Ledger.admit` answers HELD for the hold A is
    about to drop, so B marks the shard CREATING and its batch gets created. Then A's `refused` /
    `rate_limited` pops the hold: a batch runs that the ledger does not count, and the room it frees lets
    other shards in over the limit.

    Where: `Ledger.admit` trusts any existing hold (`HELD`), and `batches._refused` saves the shard before
    releasing its hold."""
    world = World(Settings(enqueued_tokens_limit=100_000))
    source = world.upload("incoming/a.jsonl", jsonl(3))

    def b_admits_the_queue(result: Any, job_id: str, index: int, change: Any) -> None:
        admit(world.ctx.for_invocation(), result[0].ledger, inline=False)

    a = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", after=b_admits_the_queue,
                                       when=lambda result, *_: result[0].state == ShardState.STAGED))
    world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED", retry_after=retry_after))
    job_id = world.submit(source, worker=a)
    world.clock.advance(seconds=60)
    world.deliver()  # B's create message
    assert world.shards(job_id)[0].state == ShardState.PENDING
    assert uncounted_in_flight(world, job_id) == [], "a batch runs that the ledger does not count"


def test_reconciliation_never_frees_a_hold_its_shard_took_back_meanwhile():
    """reconcile.py: "what the shard no longer needs is freed" (and only that).

    A worker died between storing its shard STAGED after a 429 and releasing the hold (a leaked hold, as
    the reconciler is there to reclaim). A lease later the tick's `reconcile_ledger` reads the hold, reads
    the shard (STAGED: verdict "release") and, before its ledger transaction, another worker admits the
    queue: `Ledger.admit` answers HELD for that very hold, the shard goes CREATING and gets its batch. Then
    the reconciler's transaction applies the verdict read before: the running batch's hold is freed.

    Where: `reconcile_ledger.fix` applies verdicts without checking the hold is still the one it judged
    (and `Ledger.admit`'s HELD keeps the old hold's `since`, so even that would not tell)."""
    world = World()
    source = world.upload("incoming/a.jsonl", jsonl(3))

    def dies(*_: Any) -> None:
        raise Crash("died after storing the shard STAGED, before releasing its hold")

    dying = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", after=dies,
                                           when=lambda result, *_: result[0].state == ShardState.STAGED))
    world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED"))
    job_id = world.submit(source, worker=dying)
    world.drop_pending()  # its redelivery comes later
    [shard] = world.shards(job_id)
    assert shard.state == ShardState.STAGED and world.holds(world.job(job_id)), "a leaked hold"
    lease_lapses(world)

    def another_worker_admits(*_: Any) -> None:
        admit(world.ctx.for_invocation(), shard.ledger, inline=True)

    reconciler = worker_with(world, ledgers=Hooked(world.ctx.ledgers, "update", before=another_worker_admits))
    reconcile_ledger(reconciler, shard.ledger)
    assert world.shards(job_id)[0].state == ShardState.PENDING
    assert uncounted_in_flight(world, job_id) == [], "the reconciler freed the hold of a running batch"


def test_one_refusal_alone_does_not_shred_shards_the_provider_just_accepted_whole():
    """ledger.py: "A shard refused while nothing else of the model was held is larger than the real cap".

    The cap is shared with the rest of the project, so a refusal with nothing of ours held says nothing
    about the shard's size. A 310-token shard is created and finishes; a second file's 310-token shard is
    refused once (someone else filled the quota for a moment): the ledger learns a limit of 155, splits
    it, and then splits every later shard of that size before trying it, for hours (the limit climbs back
    by 10 % per 5 minutes of creates). Six such refusals in a row cut one 64-item file into ~49 batches.

    Where: `Ledger.refused` (`others == 0`: `learned_limit = asked // 2`) ignores what was just accepted."""
    world = World()
    first = world.submit(world.upload("incoming/a.jsonl", jsonl(64, "first file")))
    world.settle(rounds=3)
    assert world.job(first).state == JobState.SUCCEEDED and len(world.provider.batches) == 1
    world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED"))
    world.submit(world.upload("incoming/b.jsonl", jsonl(64, "second file")))
    world.tick(2)
    third = world.submit(world.upload("incoming/c.jsonl", jsonl(64, "third file")))
    world.settle(rounds=6)
    assert len(world.shards(third)) == 1, "a shard the size of one just accepted alone was split untried"
    assert world.job(third).state == JobState.SUCCEEDED


def test_a_refusal_whose_hold_is_already_gone_does_not_collapse_the_limit():
    """ledger.py: a refusal teaches "what the others held at that moment (the real cap lies below what was
    asked)"; reconcile.py frees holds "no shard needs any more".

    Shard 0's creator died after its admission; a lease later the poller creates it and the create is
    refused (429). `_refused` stores the shard STAGED, then calls `Ledger.refused`. In between, the tick's
    reconciler finds the (old) hold of a STAGED shard and frees it. `refused` then finds no hold: `asked`
    is 0 and nothing else is held, so it "learns" `max(MIN_LIMIT, 0 // 2)`: a limit of 1 token. From then
    on every shard is split down to single items, and those run one at a time in the whole ledger (a
    shard over the limit goes only alone) until the limit climbs back, by 10 % per 5 minutes of creates.

    Where: `Ledger.refused` learns from a hold it does not have (and `_refused`'s two writes are not one)."""
    world = World()

    def dies(*_: Any) -> None:
        raise Crash("died after marking the shard CREATING")

    dying = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", after=dies,
                                           when=lambda result, *_: result[0].state == ShardState.CREATING))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(8)), worker=dying)
    world.drop_pending()
    [shard] = world.shards(job_id)
    assert shard.state == ShardState.CREATING and shard.create_started_at is None
    lease_lapses(world)

    def the_tick_reconciles(*_: Any) -> None:
        reconcile_ledger(world.ctx.for_invocation(), shard.ledger)

    creator = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", after=the_tick_reconciles,
                                             when=lambda result, *_: result[0].state == ShardState.STAGED))
    world.provider.fail_creates(CapacityExhausted("429 RESOURCE_EXHAUSTED"))
    create_batch_for(creator, job_id, 0)
    learned = world.ctx.ledgers.get(shard.ledger).learned_limit
    assert learned is None or learned >= shard.estimated_tokens // 2, \
        f"a {shard.estimated_tokens}-token shard refused taught a limit of {learned} token(s)"


def test_the_deadline_keeps_results_that_are_ready():
    """poll.py: at the deadline the job's pass "stop[s] everything"; cancel.py: "a running batch is
    cancelled, and the shard is abandoned". A batch that has already SUCCEEDED is not running: its results
    are paid for and ready.

    Shard 0's batch succeeds and the poller hands it to `complete`; before that write is delivered (a
    retry, a backlog), the deadline passes and the job's deadline pass runs first: `stop_shards` abandons
    every open shard, SUCCEEDED ones included, so shard 0's results are never read, its two items count as
    failed, and the job ends FAILED ("no item was embedded") instead of PARTIALLY_SUCCEEDED.

    Where: `cancel.stop_shards` abandons SUCCEEDED shards (at the deadline it could leave them to
    `complete`, whose grace `COMPLETION_GRACE` already bounds)."""
    world = World(Settings(max_tokens_per_batch=10, job_deadline_hours=1))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(4)))
    first, _ = world.shards(job_id)
    world.provider.batches[first.batch_name]["state"] = ProviderState.SUCCEEDED
    world.tick(50, deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)  # shard 0 seen SUCCEEDED; its write is queued
    assert [s.state for s in world.shards(job_id)] == [ShardState.SUCCEEDED, ShardState.PENDING]
    world.tick(15, deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)  # the deadline pass, before the write
    world.settle(rounds=4, finish=False)
    job = world.job(job_id)
    assert job.counts.succeeded == 2 and job.state == JobState.PARTIALLY_SUCCEEDED, f"{job.state}, {job.counts}"
    assert clean_end(world, job_id) == []


def test_the_ledger_document_stays_under_firestores_limit_while_results_files_are_kept():
    """ledger.py: the ledger is one Firestore document (1 MiB at most); complete.py keeps a written shard's
    results' bytes held until they expire when the provider will not delete them (Gemini refuses to delete
    `files/batch-*`: they expire after 48 h).

    Each written shard keeps its own `Hold` in the document for 48 h (~170 bytes each), so ~6,000 shards
    written within two days (two a minute: small files) make the document too large to write, and every
    admission, release and reconciliation of the model fails from then on.

    Where: `Ledger.files_kept_until` keeps one entry per shard; expiring bytes could be summed per hour."""
    book = Ledger(key="gemini~gemini-embedding-001")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(7000):  # one shard every 24 s for two days
        now = start + timedelta(seconds=24 * n)
        job_id = f"job-{n:020x}"
        _, reservation = book.admit(job_id, 0, 300, 20_000, 0.0, now)
        book.batch_ended(job_id, 0, reservation, now)
        book.files_kept_until(job_id, 0, reservation, now + timedelta(hours=48), now)
        book.expire(now)
    size = firestore_size(orjson.loads(book.model_dump_json()))
    assert size < FIRESTORE_MAX_DOCUMENT, f"the ledger document is {size} bytes"


@pytest.mark.parametrize("ended", [ProviderState.SUCCEEDED, ProviderState.FAILED])
def test_the_input_of_a_batch_found_ended_by_recovery_is_deleted(ended):
    """batches.py: "a batch that ends releases the shard's capacity (tokens first; the files' bytes once
    they are deleted)"; gemini_provider.py: "inputs are deleted when their batch ends".

    A create's answer is lost; the batch runs and ends (SUCCEEDED or FAILED) before the poller recovers it
    by its tag. `_record` adopts it straight into its end state, so `poll.batch_ended`/`_ended` never runs
    for it: its input file is never deleted (and, FAILED, its hold is kept while the shard waits again).
    The ledger frees the shard's file bytes later while the provider still stores the input.

    Where: `batches._record` (and `poll_shard`'s SUCCEEDED / provider-ended branches) skip `_ended`."""
    world = World()
    world.provider.lose_answers = [TransientError("503 after the create reached the provider")]
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(3)))
    world.provider.finish_all(ended)
    world.settle()
    assert clean_end(world, job_id) == []
    assert list(world.provider.files) == [], "an input file left at the provider"


def test_an_upload_refused_for_capacity_waits_like_a_refused_create():
    """ports.py: "`CapacityExhausted` when a create or upload is refused for a quota (nothing was made)";
    batches.py: "a create refused for capacity (429) made nothing: the shard waits again, the ledger
    learns".

    The upload of an admitted shard's input is refused with 429 (the Files API's storage quota, which
    Gemini's results files fill for 48 h). `prepare_input` is called outside the `try` that handles
    refusals, so the 429 goes up as a plain transient error: the shard stays CREATING, holding its tokens
    and its batch slot for a batch that does not exist, the ledger learns nothing (no hold-off), and the
    poller uploads again at every tick once the CREATING mark lapses.

    Where: `batches.create_batch_for` (the `prepare_input` call)."""
    world = World()
    real_prepare = world.provider.prepare_input

    def refused(*_: Any, **__: Any) -> Any:
        raise CapacityExhausted("429 RESOURCE_EXHAUSTED: file storage quota")

    world.provider.prepare_input = refused
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(3)))
    waiting = [(s.index, s.state.value) for s in world.shards(job_id) if s.state in SHARD_HOLDS_TOKENS]
    ledger = world.ctx.ledgers.get(world.job(job_id).ledger)
    assert waiting == [] and not ledger.holds, f"{waiting} hold {list(ledger.holds)} with no batch"
    assert ledger.refusals == 1, "the ledger learned nothing from the refusal"
    world.provider.prepare_input = real_prepare
    world.settle()
    assert clean_end(world, job_id) == [] and world.job(job_id).state == JobState.SUCCEEDED


# -- batches that run on -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_every_batch_is_adopted_or_cancelled_when_a_zombie_creators_cancel_failed(stop):
    """batches.py: "every batch the provider holds either adopted by its shard or cancelled"; cancel.py: "a
    worker that creates a batch for a shard abandoned meanwhile cancels it itself".

    Worker A holds shard 0 (CREATING), saves its create intent and is frozen before its create reaches the
    provider. Its lease lapses; worker B takes the shard, finds no batch by the tag, creates one and adopts
    it. A wakes up, its create makes a second batch, `_record` finds the shard moved and cancels that batch,
    but the cancel fails: A marks the shard `uncertain_create` ("whoever holds the shard now looks for strays
    by its tag at the end") and gives up. The job is then cancelled (or passes its deadline): `stop_shards`
    cancels only the adopted batch and abandons the shard; no one ever looks for the stray, which runs on
    and is billed, never read.

    Where: `cancel.stop_shards` ignores `uncertain_create` (only `poll.batch_ended` reads it)."""
    world = World(Settings(job_deadline_hours=1))
    world.provider.fail_creates(TransientError("503 before anything was made"))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(2)))
    world.drop_pending()
    assert world.shards(job_id)[0].state == ShardState.CREATING
    real_create = world.provider.create_batch

    def frozen_before_the_create_lands(**request: Any) -> Any:
        world.provider.create_batch = real_create
        lease_lapses(world)
        assert create_batch_for(world.ctx.for_invocation(), job_id, 0) == "created"  # B takes over
        world.provider.cancel_errors = [TransientError("cancel: 503")]
        return real_create(**request)

    world.provider.create_batch = frozen_before_the_create_lands
    a = world.ctx.for_invocation()
    with pytest.raises(TransientError):
        create_batch_for(a, job_id, 0)
    assert len(world.provider.batches) == 2 and world.shards(job_id)[0].uncertain_create
    if stop == "cancel":
        cancel_job(world.ctx.for_invocation(), job_id)
    else:
        world.clock.advance(hours=2)
    world.settle(rounds=6, finish=False)
    assert world.job(job_id).terminal
    assert orphans(world) == [], "a batch no shard adopted runs on"


def slow_read(world: World) -> Any:
    """A worker whose reading of the input takes longer than the stage budget (a big last segment)."""
    def takes_long(*_: Any, **__: Any) -> None:
        world.clock.advance(seconds=world.ctx.settings.stage_budget_seconds + 1)

    return worker_with(world, blobs=Hooked(world.ctx.blobs, "open_read", before=takes_long))


@pytest.mark.parametrize("why", ["a_shard_is_busy", "the_time_budget_is_spent"])
def test_a_failed_submission_leaves_no_shard_open_no_capacity_held_and_no_batch_unread(why):
    """submit.py: the job "fails with a clear error and a FAILED event"; cancel.py: stopping resolves
    "every open shard"; jobs.py: a terminal job's shards are final and its counts add up.

    `resume_submission` fails a job (the input can no longer be read, or on_bad_record=fail met a bad
    record) with `stop_shards(...)` and then `end_job(FAILED)`, whatever `stop_shards` returned. It returns
    False when a shard is leased by another worker, or at once when the invocation has spent its stage
    budget (the last staging pass of a big file easily has):
    - a_shard_is_busy: a long input is staged over several deliveries while shard 0 runs; the object is
      replaced by a new generation; the next stage delivery fails the job (SOURCE_NOT_FOUND) while a
      `complete` worker holds shard 0's lease. The job ends FAILED with `open_shards == 1`; shard 0 stays
      SUCCEEDED forever (`complete` will not write a shard of an ended job): its batch billed and never
      read, its hold never freed;
    - the_time_budget_is_spent: a strict file (on_bad_record=fail) with a bad record, whose reading took
      longer than the budget: the job ends FAILED with its shard STAGED forever and its items counted
      neither failed nor succeeded.

    Where: `submit.resume_submission` (failure branch) ignores `stop_shards`' result."""
    world = World(Settings(max_tokens_per_batch=10, stage_budget_seconds=0) if why == "a_shard_is_busy" else None)
    if why == "a_shard_is_busy":
        source = world.upload("incoming/a.jsonl", jsonl(6))
        job_id = world.submit(source)
        world.drop_pending()  # the next stage delivery comes later
        world.tick(deliver=False)  # admits shard 0
        world.deliver_topic(world.ctx.settings.poll_topic)
        world.provider.finish_all()
        world.ctx.blobs.put(f"gs://{source.bucket}/{source.name}", b'{"id": "x", "text": "a new version"}\n')
        with leased_shard(world.ctx.for_invocation(), job_id, 0):  # complete is writing shard 0
            try:
                resume_submission(world.ctx.for_invocation(), job_id)
            except TransientError:  # a fix may ask for the delivery again
                world.queue.append((world.ctx.settings.stage_topic, {"job_id": job_id}))
    else:
        source = world.upload("incoming/a.jsonl", jsonl(4) + b"{not json\n", {"on_bad_record": "fail"})
        job_id = world.submit(source, worker=slow_read(world))
    world.settle(rounds=6)
    assert world.job(job_id).state == JobState.FAILED
    assert clean_end(world, job_id) == []


@pytest.mark.parametrize("ended_by", ["a_bad_record", "a_cancel", "the_deadline"])
def test_a_strict_jobs_held_shards_never_keep_it_from_ending(ended_by):
    """submit.py: "bad input never raises: ... the job fails with a clear error and a FAILED event"; a
    job's shards are "held" out of the queue while a strict file (on_bad_record=fail) is read.

    Held shards have no ledger (`ledger == ""`). Whatever stops such a job (the bad record itself, a cancel
    while the file is being staged, its deadline) goes through `stop_shards`, which asks
    `provider_of(shard)` for each open shard: `provider_for("")` raises PermanentError("provider '' is not
    configured"). The finalize delivery fails, `cancel_job` raises, the poller's every pass fails: the
    job is never ended, no event is ever published. (`test_bad_records_are_skipped_and_reported_or_fail_
    the_file_by_option` passes only because its fixture context's `elapsed()` is hours: `stop_shards`
    returns False before touching a shard, and the job ends FAILED with its shard open.)

    Where: `batches.provider_of` (the provider from `shard.ledger`), called by `cancel.stop_shards`."""
    world = World(Settings(max_tokens_per_batch=10, stage_budget_seconds=0, job_deadline_hours=1))
    data = jsonl(6) + (b"{not json\n" if ended_by == "a_bad_record" else b"")
    job_id = world.submit(world.upload("incoming/a.jsonl", data, {"on_bad_record": "fail"}))
    if ended_by == "a_bad_record":
        world.deliver()
    else:
        assert world.job(job_id).state == JobState.SUBMITTING and world.shards(job_id)[0].ledger == ""
        world.drop_pending()  # the rest of the file is still to stage
        if ended_by == "a_cancel":
            try:
                cancel_job(world.ctx.for_invocation(), job_id)
            except PermanentError as exc:
                pytest.fail(f"cancel_job raised {exc!r}")
        else:
            world.clock.advance(hours=2)
    world.settle(rounds=6)
    job = world.job(job_id)
    assert job.terminal and job.state == (JobState.CANCELLED if ended_by == "a_cancel" else JobState.FAILED), \
        f"{job.state} (last error: {job.last_error})"
    assert clean_end(world, job_id) == []


# -- jobs that do not end --------------------------------------------------------------------------------


def test_a_strict_jobs_shards_reach_the_queue_even_when_opening_them_was_interrupted():
    """submit.py: "a job whose options say on_bad_record=fail keeps its shards out of the queue until the
    whole file is read clean" (then opens them), and every delivery resumes what the last one left.

    The file reads clean; staging's last checkpoint moves the job RUNNING; `_open_to_queue` then gives each
    held shard its ledger, one write each. The second write fails (Firestore 503) and the finalize event is
    redelivered: the job is RUNNING, so `resume_submission` answers ALREADY_DONE and never opens the rest.
    Those shards stay STAGED with no ledger: no admission ever sees them; the job hangs until its deadline
    (72 h) fails it, none of their items tried.

    Where: `submit._open_to_queue` runs once, after the job left SUBMITTING."""
    world = World(Settings(max_tokens_per_batch=10))
    source = world.upload("incoming/a.jsonl", jsonl(6), {"on_bad_record": "fail"})

    def firestore_blinks(*_: Any) -> None:
        raise TransientError("Firestore unavailable (503)")

    def opening_shard_1(job_id: str, index: int, change: Any) -> bool:
        return index == 1 and world.ctx.jobs.get_shard(job_id, index).ledger == ""

    flaky = worker_with(world, jobs=Hooked(world.ctx.jobs, "update_shard", before=firestore_blinks,
                                           when=opening_shard_1))
    job_id = world.submit(source, worker=flaky)
    world.settle(rounds=15)  # five hours
    assert world.job(job_id).state == JobState.SUCCEEDED, \
        [(s.index, s.state.value, s.ledger) for s in world.shards(job_id)]
    assert clean_end(world, job_id) == []


def test_a_completing_job_past_its_deadline_is_finished_not_failed_a_day_later():
    """complete.py: "A crash after that transaction leaves the job COMPLETING, which the redelivered message
    (or the poller, when it is stale) finishes"; poll.py: a job's step includes "finish a COMPLETING job left
    unfinished".

    Shard 0 is written. Past the deadline, before the job's own deadline pass, a poll (or a webhook) finds
    shard 1's batch FAILED: `_retry_or_abandon` abandons it (stopping), which closes the last shard (job
    COMPLETING), and its finish message fails to publish (the poll worker logs it and carries on). From
    then on `poll_job` sends the job to `_under_lease` (past its deadline), which answers "completing" and
    never finishes it; 24 h later it fails it COMPLETION_FAILED, although shard 0's embeddings are written.

    Where: `poll._under_lease` returns "completing" for a COMPLETING job before the grace, finishing nothing."""
    world = World(Settings(max_tokens_per_batch=10, job_deadline_hours=1))
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(4)))
    first, second = world.shards(job_id)
    world.provider.batches[first.batch_name]["state"] = ProviderState.SUCCEEDED
    world.tick(2)
    assert [s.state for s in world.shards(job_id)] == [ShardState.WRITTEN, ShardState.PENDING]
    world.clock.advance(hours=1)
    world.provider.finish_all(ProviderState.FAILED)
    world.ctx.publisher.fail_next = TransientError("Pub/Sub unavailable")
    poll_work(world.ctx.for_invocation(), {"shards": [snapshot_of(world.ctx.jobs.get_shard(job_id, 1))]})
    assert world.job(job_id).state == JobState.COMPLETING
    world.settle(rounds=6)  # two hours of ticks
    job = world.job(job_id)
    assert job.state == JobState.PARTIALLY_SUCCEEDED, f"{job.state}: {job.error}"
    assert clean_end(world, job_id) == []


# -- work that grows with the input ----------------------------------------------------------------------


class CountingBlobs:
    """The blob store, counting the bytes each invocation reads from the input bucket."""

    def __init__(self, blobs: Any, bucket: str, tally: list[int]):
        self._blobs, self._bucket, self._tally = blobs, bucket, tally

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)

    @contextmanager
    def open_read(self, uri: str, generation: str | None = None, offset: int = 0):
        with self._blobs.open_read(uri, generation, offset) as stream:
            if not uri.startswith(f"gs://{self._bucket}/"):
                yield stream
                return
            tally = self._tally

            class Counted(io.RawIOBase):
                def readable(self) -> bool:
                    return True

                def readinto(self, buffer: Any) -> int:
                    data = stream.read(len(buffer))
                    buffer[: len(data)] = data
                    tally.append(len(data))
                    return len(data)

            yield io.BufferedReader(Counted())


def test_a_staging_invocations_work_does_not_grow_with_the_input():
    """staging.py: "an invocation stages for at most `stage_budget_seconds`, then hands the rest to the next
    one ..., so no invocation's work grows with the input".

    A 1.7 MB file staged over 8 invocations: each resumed invocation opens the object at byte 0 and reads
    (and parses) everything already staged again before reaching its checkpoint (`_resumed` skips records
    by count; `Staging.position` and `seen_ids_uri` are never written, `open_read`'s `offset` never used).
    The last invocation reads the whole file. With a file of some GB, re-reading the staged part alone
    outlasts the budget and then the function's timeout: staging stops advancing, and the job fails at its
    deadline.

    Where: `staging.stage_input` / `_resumed` (resume from a byte offset; keep the duplicate-id set)."""
    world = World(Settings(max_tokens_per_batch=40_000, stage_budget_seconds=0))
    source = world.upload("incoming/big.jsonl", jsonl(40_000))
    bucket = world.ctx.settings.input_bucket
    reads: list[list[int]] = []

    def invocation() -> Any:
        reads.append([])
        return worker_with(world, blobs=CountingBlobs(world.ctx.blobs, bucket, reads[-1]))

    job_id = world.submit(source, worker=invocation())
    while not world.job(job_id).staging.done:
        resume_submission(invocation(), job_id)
    per_invocation = [sum(r) for r in reads]
    assert len(per_invocation) >= 6
    assert max(per_invocation) <= 3 * per_invocation[0], \
        f"bytes read per invocation: {per_invocation} (the file is {source.size})"


# -- files left behind -----------------------------------------------------------------------------------


def test_no_staging_file_is_left_after_the_event_when_a_zombie_writer_resumes():
    """finish.py: "After the event, the job's staging files are deleted ...; the job stays due until they
    are gone."

    Worker A writes shard 0's results and is frozen while the provider streams them. Its lease lapses;
    worker B (the redelivered message) writes the shard, which finishes the job: event published, staging
    deleted, the job no longer due. A wakes up and completes its writing: the output files are rewritten
    the same, but `failed-000000.jsonl` is written again under the staging prefix (and a follow-up's
    records file would be too). Nothing ever deletes it: the job is not due any more.

    Where: `output.write_shard_output` writes into staging without a fence; nothing re-checks staging."""
    world = World()
    job_id = world.submit(world.upload("incoming/a.jsonl", jsonl(2)))
    world.provider.finish_all()
    world.tick(deliver=False)
    world.deliver_topic(world.ctx.settings.poll_topic)
    world.drop_pending()  # shard 0 SUCCEEDED; its write message is A's
    assert world.shards(job_id)[0].state == ShardState.SUCCEEDED

    def the_world_moves_on(*_: Any) -> None:
        lease_lapses(world)
        write_shard(world.ctx.for_invocation(), job_id, 0)  # B
        world.settle(rounds=2)
        assert world.job(job_id).terminal and world.job(job_id).next_poll_at is None

    provider = Hooked(world.provider, "iter_results", before=the_world_moves_on)
    write_shard(worker_with(world, providers={"fake": provider}), job_id, 0)
    world.settle(rounds=2)  # a fix may sweep staging once more, a lease after the event
    assert world.staging_left(world.job(job_id)) == []
