"""Adversarial tests of `complete`'s continuation chains (a batch larger than `complete_max_rows` is written
by the root shard and continuation shards of the same batch), over the fakes.

Scenarios (one test each; 1, 2, 12 and 14 failed against the first version of chains, as their docstrings
say):
 1. bounded time: each link of a chain reads at most about its own rows of results, not every result
    before it again;
 2. a continuation whose results became unreadable is abandoned: counts, one event, results dropped once,
    capacity released, and `errors.jsonl` names only the items no link wrote;
 3. a job cancelled mid-chain: counts, one event, results dropped once, capacity released;
 4. a worker killed after each port call of a link's write (root or continuation: files written but no
    transaction, a transaction but no message, ...), then redelivered / handed over by the poller;
 5. every write message delivered again, after the chain ended and out of order: nothing changes;
 6. a worker of the root whose lease lapsed runs on and tries to commit after another wrote the whole
    chain and the job ended: no second continuation, no staging left, the same output;
 7. a worker of a continuation whose lease lapsed while the job was cancelled: its late files do not stay;
 8. the poller hands a stale continuation over while its message is being handled: written once;
 9. a job past its deadline mid-chain: the ready results are still written, once, and the job ends;
10. missing results retried by a follow-up that is itself chained: every item once;
11. failed and missing items in one chain with no retries left: each reported once, never also written;
12. `reconcile_ledger` running while a long chain is open: once the chain's end deletes the results, no
    capacity stays counted for them;
13. a webhook for the chain's batch (`poll_batch`, several shards share the batch name) mid-chain;
14. two workers of one shard under different `complete_max_rows` (a rolling deploy): every item counted
    once.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardOrigin, ShardState
from shared.errors import PermanentError
from shared.services import messages
from shared.services.cancel import cancel_job
from shared.services.complete import write_shard
from shared.services.finish import paths_of
from shared.services.poll import poll_batch, poll_work
from shared.services.poll import tick as poll_tick
from shared.services.submit import submit_object
from tests.fakes import Crash, make_context, mortal
from tests.unit.test_adversarial_world import Hooked
from tests.unit.test_pipeline_use_cases import EVENTS, Driver, jsonl, upload

ROWS = 3  # complete_max_rows: 10 items make a chain of 4 links (3, 3, 3, 1)
N = 10


def new_ctx(**settings):
    return make_context(Settings(**({"complete_max_rows": ROWS, "max_item_attempts": 2} | settings)))


def succeeded(ctx, n: int = N) -> tuple[Driver, str]:
    """A job of `n` items in one batch, SUCCEEDED as the poller saw it; its write message is held back."""
    run = Driver(ctx)
    job_id = submit_object(ctx, upload(ctx, "incoming/a.jsonl", jsonl(n))).job_id
    run.deliver()
    ctx.provider.finish_all()
    ctx.clock.advance(minutes=1)
    poll_tick(ctx.for_invocation())
    for topic, data, _ in ctx.publisher.messages[run.deliveries.delivered:]:
        if topic == ctx.settings.poll_topic:
            poll_work(ctx.for_invocation(), orjson.loads(data))
    run.deliveries.delivered = len(ctx.publisher.messages)  # the write messages: delivered by the test
    [shard] = ctx.jobs.shards(job_id)
    assert shard.state == ShardState.SUCCEEDED
    return run, job_id


def links(ctx, job_id: str, origin: ShardOrigin = ShardOrigin.INPUT):
    return [s for s in ctx.jobs.shards(job_id) if s.origin == origin]


def lapse(ctx) -> None:
    ctx.clock.advance(seconds=ctx.settings.lease_seconds + 1)


def rows(ctx, uri: str | None) -> list[dict]:
    return [orjson.loads(line) for line in ctx.blobs.read(uri).splitlines()] if uri else []


def wrong_end(ctx, job_id: str, n: int = N, *, deletes: int | None = 1) -> list[str]:
    """What is wrong with an ended job: empty when it ended cleanly (every item once, written or failed)."""
    job = ctx.jobs.get(job_id)
    wrong = []
    if not job.terminal or job.event_published_at is None or job.next_poll_at is not None:
        wrong.append(f"not ended cleanly: {job.state} event={job.event_published_at} due={job.next_poll_at}")
    events = [e for e in ctx.publisher.on(EVENTS) if e["job_id"] == job_id]
    if len({e["event_id"] for e in events}) != 1:  # at least once, always under one event id
        wrong.append(f"{len(events)} events")
    counts = job.counts
    if (counts.succeeded + counts.failed, counts.total) != (n, n):
        wrong.append(f"items unaccounted for: {counts}")
    if job.open_shards or any(not s.final for s in ctx.jobs.shards(job_id)):
        wrong.append(f"open shards: {job.open_shards}")
    if events and events[0].get("output"):
        output = events[0]["output"]
        missing_files = [u for u in output.get("embeddings") or [] if ctx.blobs.stat(u) is None]
        if missing_files:
            wrong.append(f"the event names files that do not exist: {missing_files}")
        written = [r["id"] for u in output.get("embeddings") or [] if ctx.blobs.stat(u) for r in rows(ctx, u)]
        if len(written) != len(set(written)):
            wrong.append(f"items written twice: {sorted(written)}")
        if job.state != JobState.CANCELLED and len(written) != counts.succeeded:
            wrong.append(f"{len(written)} items written, {counts.succeeded} counted")
        errors = [r["id"] for r in rows(ctx, output.get("errors"))]
        if len(errors) != len(set(errors)) or set(errors) & set(written):
            wrong.append(f"errors.jsonl repeats or names written items: {sorted(errors)}")
        if len(errors) != counts.failed:
            wrong.append(f"errors.jsonl has {len(errors)} rows, {counts.failed} items counted failed")
    paths = paths_of(ctx, job)
    left = [b.uri for b in ctx.blobs.list(paths.staging)]
    if left:
        wrong.append(f"staging left: {left}")
    ledger = ctx.ledgers.get(job.ledger)
    if ledger is not None and ledger.holds:  # bytes kept 48 h after a reconcile: scenario 12
        wrong.append(f"capacity held: {list(ledger.holds)}")
    if ctx.provider.calls.get("delete_results", 0) not in ((0, 1) if deletes is None else (deletes,)):
        wrong.append(f"results dropped {ctx.provider.calls.get('delete_results', 0)} times")
    return wrong


# -- 1. time -----------------------------------------------------------------------------------------------


def test_each_link_of_a_chain_reads_at_most_its_own_rows_of_results():
    """Each link parses only its own rows: the provider skips the results before `results_from` unparsed
    (found: links skipped them by parsing, so the last link of a batch parsed all of it)."""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    real = ctx.provider.iter_results
    read: list[int] = []

    def counting(name, start=0):
        read.append(0)
        for result in real(name, start):
            read[-1] += 1
            yield result

    ctx.provider.iter_results = counting
    run.until_ended(job_id)
    assert len(links(ctx, job_id)) == 4
    assert max(read) <= ROWS + 1, f"results read per link: {read} (each link writes at most {ROWS})"


# -- 2, 3. abandoned continuations ------------------------------------------------------------------------


def test_a_continuation_whose_results_became_unreadable_fails_only_the_items_no_link_wrote():
    """The abandoned continuation's items count failed, and `errors.jsonl` names only those: a continuation
    shares its root's records file, whose written keys are skipped (found: all 10 rows were listed)."""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    ctx.provider.unreadable_results = PermanentError("gone")
    run.deliver()  # the continuation's message
    [root, rest] = links(ctx, job_id)
    assert rest.state == ShardState.ABANDONED
    job = ctx.jobs.get(job_id)
    assert (job.counts.succeeded, job.counts.failed) == (3, 7)
    assert wrong_end(ctx, job_id) == []


def test_a_job_cancelled_mid_chain_counts_the_unwritten_items_failed_and_ends_once():
    """A cancel between two links (the stop abandons the SUCCEEDED continuation): 3 written, 7 failed, one
    event, the root's results dropped once and its capacity released, no staging left. (A cancelled job
    writes no `errors.jsonl`; a job FAILED by a stop after COMPLETION_GRACE would, with scenario 2's
    fault.)"""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)  # the continuation's message comes late
    cancel_job(ctx.for_invocation(), job_id)
    run.tick()
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.CANCELLED and (job.counts.succeeded, job.counts.failed) == (3, 7)
    assert wrong_end(ctx, job_id) == []


# -- 4. crashes -------------------------------------------------------------------------------------------


def _calls_of_a_write(link: int) -> int:
    ctx = new_ctx()
    _, job_id = succeeded(ctx)
    for i in range(link):
        write_shard(ctx.for_invocation(), job_id, i)
    worker, life = mortal(ctx)
    write_shard(worker, job_id, link)
    return len(life.calls)


@pytest.mark.parametrize("link", [0, 1, 3])
def test_a_worker_killed_after_any_port_call_of_a_links_write_is_redone_cleanly(link):
    """A link's write dies after its k-th port call, for every k: output files written and no transaction,
    keys file written and no transaction, transaction committed and no continuation message, results not
    dropped... The message is redelivered (and the poller hands stale shards over): the job must end with
    every item once, one event, the results dropped at most once (a worker dead between the last link's
    transaction and its `drop_results` leaves them to expire, as for any shard), nothing held, no staging
    left."""
    total = _calls_of_a_write(link)
    assert total > 5
    failures = {}
    for budget in range(1, total):
        ctx = new_ctx()
        run, job_id = succeeded(ctx)
        for i in range(link):
            write_shard(ctx.for_invocation(), job_id, i)
        run.deliveries.delivered = len(ctx.publisher.messages)
        worker, life = mortal(ctx, budget)
        with pytest.raises(Crash):
            write_shard(worker, job_id, link)
        lapse(ctx)
        ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": link}), {})
        run.until_ended(job_id)
        wrong = wrong_end(ctx, job_id, deletes=None)
        if len(links(ctx, job_id)) != 4:
            wrong.append(f"chain: {[(s.index, s.state.value) for s in links(ctx, job_id)]}")
        if wrong:
            failures[f"{budget}:{life.calls[-1]}"] = wrong
    assert failures == {}


# -- 5. repeated and reordered messages ---------------------------------------------------------------------


def test_every_write_message_delivered_again_after_the_chain_ended_changes_nothing():
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 0}), {})
    run.until_ended(job_id)
    before = (ctx.jobs.get(job_id).counts.model_dump(), {u: ctx.blobs.read(u) for u in ctx.blobs.objects})
    for index in (3, 0, 2, 1, 3):  # the chain's messages, again, out of order
        assert write_shard(ctx.for_invocation(), job_id, index) == "already_written"
    run.tick(30)
    after = (ctx.jobs.get(job_id).counts.model_dump(), {u: ctx.blobs.read(u) for u in ctx.blobs.objects})
    assert after == before and len(links(ctx, job_id)) == 4
    assert wrong_end(ctx, job_id) == []


# -- 6, 7. workers whose lease lapsed ---------------------------------------------------------------------


def test_a_lapsed_worker_of_the_root_committing_after_the_whole_chain_ended_leaves_nothing_behind():
    """Worker A writes the root (files and keys file), then stalls before its transaction; its lease
    lapses, B writes the root and the whole chain, the job ends and drops its staging. A then tries to
    commit: nothing may move, no second continuation, its late keys file and staging files deleted."""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)

    def others_finish_the_chain(*_, **__):
        lapse(ctx)
        ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 0}), {})
        run.until_ended(job_id)

    a = dataclasses.replace(ctx.for_invocation(), jobs=Hooked(ctx.jobs, "update", before=others_finish_the_chain,
                                                             when=lambda job_id_, change, **kw: kw.get("shards") == [0]))
    assert write_shard(a, job_id, 0) == "already_written"
    assert len(links(ctx, job_id)) == 4
    assert wrong_end(ctx, job_id) == []


def test_a_lapsed_worker_of_a_continuation_abandoned_by_a_cancel_leaves_no_output_nor_staging():
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)

    def cancelled_meanwhile(*_, **__):
        lapse(ctx)
        cancel_job(ctx.for_invocation(), job_id)
        run.tick()

    a = dataclasses.replace(ctx.for_invocation(), jobs=Hooked(ctx.jobs, "update", before=cancelled_meanwhile,
                                                             when=lambda job_id_, change, **kw: kw.get("shards") == [1]))
    assert write_shard(a, job_id, 1) == "already_written"
    job = ctx.jobs.get(job_id)
    paths = paths_of(ctx, job)
    assert job.state == JobState.CANCELLED
    assert ctx.blobs.stat(paths.embeddings(1)) is None and ctx.blobs.stat(paths.parquet(1)) is None
    assert len(links(ctx, job_id)) == 2, "no continuation of an abandoned link"
    assert [w for w in wrong_end(ctx, job_id) if "errors.jsonl" not in w] == []  # errors.jsonl: scenario 3


# -- 8. the poller and the message at once ------------------------------------------------------------------


def test_a_stale_continuation_handed_over_by_the_poller_while_its_message_runs_is_written_once():
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)  # its message is late
    ctx.clock.advance(minutes=ctx.settings.complete_stale_minutes + 1)
    stale = ctx.jobs.due_shards(ctx.clock(), 100)
    assert [s.index for s in stale] == [1]
    assert write_shard(ctx.for_invocation(), job_id, 1) == "written"  # the late message, meanwhile
    run.deliveries.delivered = len(ctx.publisher.messages)
    poll_work(ctx.for_invocation(), {"shards": [messages.snapshot_of(s) for s in stale]})
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 2}), {})
    run.until_ended(job_id)
    assert len(links(ctx, job_id)) == 4
    assert wrong_end(ctx, job_id) == []


# -- 9. deadline --------------------------------------------------------------------------------------------


def test_a_job_past_its_deadline_mid_chain_writes_its_ready_results_once_and_ends():
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)
    now = ctx.clock()
    ctx.jobs.update(job_id, lambda tx: setattr(tx.job, "deadline_at", now))
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 1}), {})
    run.until_ended(job_id)
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == N
    assert wrong_end(ctx, job_id) == []


# -- 10, 11. failed and missing items ------------------------------------------------------------------------


def test_missing_results_retried_by_a_chained_follow_up_are_each_written_once():
    """The chain's last link fails every item no result named (MISSING_RESULT), not bounded by
    `complete_max_rows`: its follow-up can itself be larger than one invocation, and is chained."""
    ctx = new_ctx()
    ctx.provider.missing_texts = {f"text number {i}" for i in range(5)}
    run, job_id = succeeded(ctx)
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 0}), {})
    run.deliver()
    ctx.provider.missing_texts = set()
    run.until_ended(job_id)
    follow_ups = links(ctx, job_id, ShardOrigin.FOLLOW_UP)
    assert len(follow_ups) >= 2 and any(s.continues is not None for s in follow_ups), "the follow-up is chained"
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED and job.counts.succeeded == N
    assert wrong_end(ctx, job_id, deletes=2) == []


def test_failed_and_missing_items_of_a_chain_with_no_retry_left_are_each_reported_once():
    ctx = new_ctx(max_item_attempts=1)
    ctx.provider.failing_texts = {"text number 9", "text number 5", "text number 1"}
    ctx.provider.missing_texts = {"text number 7", "text number 0"}
    run, job_id = succeeded(ctx)
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 0}), {})
    run.until_ended(job_id)
    job = ctx.jobs.get(job_id)
    assert (job.counts.succeeded, job.counts.failed) == (5, 5)
    [event] = ctx.publisher.on(EVENTS)
    assert sorted(r["id"] for r in rows(ctx, event["output"]["errors"])) == [f"doc-{i}" for i in (0, 1, 5, 7, 9)]
    assert wrong_end(ctx, job_id) == []


# -- 12. reconciliation ---------------------------------------------------------------------------------------


def test_reconcile_during_a_long_chain_leaves_no_capacity_counted_once_the_results_are_deleted():
    """A chain outlasts a lease: the tick's reconciliation keeps the hold of a written root whose continuation
    still reads its results, so the chain's end releases it (found: it became bytes kept for 48 h)."""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    [root] = links(ctx, job_id)
    held = ctx.ledgers.get(root.ledger).file_bytes_held
    assert held > 0, "the batch's result files are counted"
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)  # the next link waits (a busy function)
    lapse(ctx)
    poll_tick(ctx.for_invocation())  # reconciles the ledger
    run.deliveries.delivered = len(ctx.publisher.messages)
    ctx.publisher.publish(ctx.settings.complete_topic, orjson.dumps({"job_id": job_id, "shard": 1}), {})
    run.until_ended(job_id)
    assert ctx.provider.calls["delete_results"] == 1
    ledger = ctx.ledgers.get(root.ledger)
    assert ledger.file_bytes_held == 0, f"deleted results still counted: {ledger.kept_files}"


# -- 13. webhooks ----------------------------------------------------------------------------------------------


def test_a_webhook_for_a_chains_batch_mid_chain_neither_rewrites_nor_loses_the_chain():
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    assert write_shard(ctx.for_invocation(), job_id, 0) == "written"
    run.deliveries.delivered = len(ctx.publisher.messages)  # the continuation's message is lost
    [root, rest] = links(ctx, job_id)
    poll_batch(ctx.for_invocation(), root.batch_name)
    assert ctx.jobs.get_shard(job_id, 1).next_poll_at is not None, "the continuation stays due"
    run.until_ended(job_id)
    assert len(links(ctx, job_id)) == 4
    assert wrong_end(ctx, job_id) == []


# -- 14. a rolling deploy -------------------------------------------------------------------------------------


def test_workers_of_one_shard_under_different_max_rows_still_count_every_item_once():
    """During a deploy an old instance (5 rows) whose lease lapsed runs on after a new one (3 rows) committed
    the root: both stop where the shard says (`write_rows`, fixed when it was made), so the late one
    writes the same bytes (found: it rewrote the root's files and keys with 5 items, 2 counted nowhere)."""
    ctx = new_ctx()
    run, job_id = succeeded(ctx)
    old = dataclasses.replace(ctx.for_invocation(),
                              settings=ctx.settings.model_copy(update={"complete_max_rows": 5}))

    def new_one_commits_first(*_, **__):
        lapse(ctx)
        assert write_shard(ctx.for_invocation(), job_id, 0) == "written"

    old = dataclasses.replace(old, blobs=Hooked(ctx.blobs, "open_write", before=new_one_commits_first))
    assert write_shard(old, job_id, 0) == "already_written"
    run.until_ended(job_id)
    assert wrong_end(ctx, job_id) == []
