"""The capacity ledger: its rules one by one, then a state machine of the pipeline living under a real cap
it does not know (reserve, create, 429, learn, batch ends, crashes, reconciliation)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shared.config import Settings
from shared.domain.jobs import FINAL_SHARD_STATES, SHARD_HOLDS_TOKENS, ShardState, SourceObject
from shared.domain.ledger import (
    ACCEPTED_MEMORY_SECONDS,
    CEILING_SECONDS,
    HOLD_OFF_SECONDS,
    MIN_LIMIT,
    RAISE_SECONDS,
    Admission,
    Ledger,
)
from shared.errors import TransientError
from shared.ports import ProviderState
from shared.services.complete import complete_message
from shared.services.poll import poll_work, tick
from shared.services.submit import resume_submission, submit_object
from tests.fakes import Crash, FakeClock, make_context, mortal

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Book:
    """A ledger driven as the pipeline drives it: each shard remembers the reservation its admission got."""

    def __init__(self, limit: int | None = 100_000, batches: int | None = 10, files: int | None = None) -> None:
        self.ledger = Ledger(key="gemini~m")
        self.ledger.configure(limit, batches, files)
        self.reservations: dict[int, str | None] = {}
        self.asked: dict[int, int] = {}

    def __getattr__(self, name: str):
        return getattr(self.ledger, name)

    def admit(self, shard: int, tokens: int, files: int, key: float, now: datetime, **kw) -> Admission:
        self.asked[shard] = tokens
        outcome, reservation = self.ledger.admit("j", shard, tokens, files, key, now, **kw)
        if reservation is not None:
            self.reservations[shard] = reservation
        return outcome

    def refused(self, shard: int, now: datetime) -> bool:
        return self.ledger.refused("j", shard, self.reservations.get(shard), self.asked[shard], now)

    def created(self, shard: int, now: datetime) -> None:
        self.ledger.created("j", shard, self.reservations.get(shard), now)

    def batch_ended(self, shard: int, now: datetime) -> None:
        self.ledger.batch_ended("j", shard, self.reservations.get(shard), now)

    def release(self, shard: int, now: datetime) -> None:
        self.ledger.release("j", shard, self.reservations.get(shard), now)

    def files_kept_until(self, shard: int, expiry: datetime, now: datetime) -> None:
        self.ledger.files_kept_until("j", shard, self.reservations.get(shard), expiry, now)

    def rate_limited(self, shard: int, now: datetime, seconds: float) -> None:
        self.ledger.rate_limited("j", shard, self.reservations.get(shard), now, seconds)


def test_admits_within_tokens_batches_and_files():
    book = Book(limit=100, batches=2, files=1000)
    assert book.admit(0, 60, 400, 0.0, NOW) == Admission.ADMITTED
    assert book.admit(1, 50, 100, 1.0, NOW) == Admission.WAIT, "tokens"
    assert book.admit(1, 40, 700, 1.0, NOW) == Admission.WAIT, "file storage"
    assert book.admit(1, 40, 100, 1.0, NOW) == Admission.ADMITTED
    assert book.admit(2, 1, 1, 2.0, NOW) == Admission.WAIT, "batches"
    assert book.admit(3, 101, 1, 3.0, NOW) == Admission.TOO_LARGE
    assert (book.tokens_held, book.batches_held, book.file_bytes_held, book.virtual_time) == (100, 2, 500, 1.0)


def test_each_admission_is_its_own_reservation_and_only_naming_it_frees_it():
    book = Book(limit=200)
    book.admit(0, 60, 0, 0.0, NOW)
    first = book.reservations[0]
    book.admit(0, 60, 0, 0.0, NOW)  # admitted again: an interrupted admission, or two admitters crossing
    second = book.reservations[0]
    assert first != second and book.tokens_held == 120, "both held (the safe side) until one is released"
    book.ledger.release("j", 0, "r-unknown", NOW)
    assert book.tokens_held == 120
    book.ledger.release("j", 0, first, NOW)
    assert book.tokens_held == 60 and [h.reservation for h in book.holds.values()] == [second]


def test_a_batch_ending_frees_tokens_and_its_slot_then_deleting_files_frees_the_rest():
    book = Book(limit=100, batches=1)
    book.admit(0, 80, 300, 0.0, NOW)
    book.batch_ended(0, NOW + timedelta(seconds=10))
    assert (book.tokens_held, book.batches_held, book.file_bytes_held) == (0, 0, 300)
    assert book.admit(1, 80, 500, 1.0, NOW) == Admission.ADMITTED
    book.release(0, NOW)
    assert book.file_bytes_held == 500 and [h.shard for h in book.holds.values()] == [1]
    book.files_kept_until(1, NOW + timedelta(hours=48), NOW)
    assert not book.holds and book.file_bytes_held == 500, "kept files stay counted, outside the holds"
    assert book.expire(NOW + timedelta(hours=48)) == 0 and book.expire(NOW + timedelta(hours=49)) == 1
    assert book.file_bytes_held == 0


def test_files_kept_by_the_provider_take_one_entry_per_hour_however_many_shards():
    book = Book(limit=None, batches=None)
    for i in range(2000):
        now = NOW + timedelta(seconds=30 * i)
        book.admit(i, 1, 1000, 0.0, now)
        book.files_kept_until(i, now + timedelta(hours=48), now)
    assert book.file_bytes_held == 2_000_000 and len(book.kept_files) <= 18
    assert len(book.ledger.model_dump_json()) < 4000


def test_a_refusal_lowers_the_limit_to_what_the_others_held_and_remembers_the_level():
    book = Book(limit=1_000_000)
    for i in range(3):
        book.admit(i, 100_000, 0, float(i), NOW)
    assert book.refused(2, NOW) is False
    assert (book.learned_limit, book.ceiling, book.tokens_held) == (200_000, 300_000, 200_000)
    assert book.admit(3, 10_000, 0, 3.0, NOW) == Admission.WAIT, "held off: nothing freed since the refusal"
    book.batch_ended(0, NOW + timedelta(seconds=30))
    assert book.admit(3, 100_000, 0, 3.0, NOW + timedelta(seconds=31)) == Admission.ADMITTED


def test_after_a_refusal_nothing_is_asked_for_a_while_unless_capacity_frees():
    book = Book(limit=1_000_000)
    book.admit(0, 10_000, 0, 0.0, NOW)
    book.admit(1, 10_000, 0, 0.0, NOW)
    book.refused(1, NOW)
    book.ledger.learned_limit = None  # room, as far as the limit goes
    assert book.admit(1, 5_000, 0, 0.0, NOW + timedelta(seconds=HOLD_OFF_SECONDS - 1)) == Admission.WAIT
    assert book.admit(1, 5_000, 0, 0.0, NOW + timedelta(seconds=HOLD_OFF_SECONDS)) == Admission.ADMITTED
    book.refused(1, NOW + timedelta(seconds=HOLD_OFF_SECONDS))
    book.ledger.learned_limit = None
    book.batch_ended(0, NOW + timedelta(seconds=HOLD_OFF_SECONDS + 1))
    assert book.admit(2, 5_000, 0, 0.0, NOW + timedelta(seconds=HOLD_OFF_SECONDS + 2)) == Admission.ADMITTED, \
        "capacity freed since the refusal: ask again at once"


def test_a_shard_refused_alone_is_over_the_real_cap():
    book = Book(limit=1_000_000)
    book.admit(0, 400_000, 0, 0.0, NOW)
    assert book.refused(0, NOW) is True
    assert book.learned_limit == 200_000 and book.splits == 1
    assert book.admit(1, 300_000, 0, 0.0, NOW + timedelta(minutes=5)) == Admission.TOO_LARGE
    book.admit(2, 1, 0, 0.0, NOW)
    assert book.refused(2, NOW) is True and book.learned_limit == MIN_LIMIT
    later = NOW + timedelta(minutes=5)
    assert book.admit(4, 1, 0, 0.0, later) == Admission.ADMITTED
    assert book.admit(3, 5000, 0, 0.0, later, splittable=False) == Admission.WAIT
    book.release(4, later)
    assert book.admit(3, 5000, 0, 0.0, NOW + timedelta(minutes=5), splittable=False) == Admission.ADMITTED, \
        "one item over the limit is still tried, alone: it cannot be split"


def test_a_shard_refused_alone_at_a_size_accepted_alone_recently_is_not_split():
    book = Book(limit=1_000_000)
    book.admit(0, 400_000, 0, 0.0, NOW)
    book.created(0, NOW)
    book.batch_ended(0, NOW + timedelta(minutes=1))
    book.admit(1, 400_000, 0, 1.0, NOW + timedelta(minutes=2))
    assert book.refused(1, NOW + timedelta(minutes=2)) is False, "the cap is shared: wait, do not shred"
    assert book.splits == 0 and book.learned_limit is None
    assert book.admit(1, 400_000, 0, 1.0, NOW + timedelta(minutes=2, seconds=HOLD_OFF_SECONDS - 1)) == Admission.WAIT
    later = NOW + timedelta(minutes=3)
    book.admit(2, 400_000, 0, 2.0, later)
    assert book.refused(2, later) is True, "refused alone again: the size is news after all"
    book = Book(limit=1_000_000)
    book.admit(0, 400_000, 0, 0.0, NOW)
    book.created(0, NOW)
    book.batch_ended(0, NOW)
    much_later = NOW + timedelta(seconds=ACCEPTED_MEMORY_SECONDS + 1)
    book.admit(1, 400_000, 0, 1.0, much_later)
    assert book.refused(1, much_later) is True, "what was accepted long ago vouches for nothing"


def test_the_limit_rises_slowly_only_once_no_refusal_is_recent():
    book = Book(limit=1_000_000)
    book.admit(0, 100_000, 0, 0.0, NOW)
    book.admit(1, 100_000, 0, 0.0, NOW)
    book.refused(1, NOW)
    book.created(0, NOW + timedelta(seconds=CEILING_SECONDS - 1))
    assert book.learned_limit == 100_000, "not while the refused level is a fresh ceiling"
    later = NOW + timedelta(seconds=CEILING_SECONDS)
    book.created(0, later)
    assert book.learned_limit == 110_001
    book.created(0, later + timedelta(seconds=RAISE_SECONDS - 1))
    assert book.learned_limit == 110_001, "at most once per raise interval"
    for n in range(1, 40):
        book.created(0, later + timedelta(seconds=RAISE_SECONDS * n))
    assert book.learned_limit is None and book.effective_limit == 1_000_000, "back to the setting"


def test_queue_estimates_come_from_the_recent_pace():
    book = Book(limit=100)
    book.admit(0, 100, 0, 0.0, NOW)
    assert book.seconds_until(50) is None, "no pace yet"
    book.batch_ended(0, NOW)
    book.admit(1, 100, 0, 0.0, NOW)
    book.batch_ended(1, NOW + timedelta(seconds=10))  # 100 tokens in 10 s
    book.admit(2, 100, 0, 0.0, NOW)
    assert book.seconds_until(0) == 0.0 and book.seconds_until(100) == 10.0


# -- the pipeline under a cap it does not know ---------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Jobs submitted, batches ending, workers dying anywhere, ticks at any pace, with the provider's real
    cap (`quota`) below, equal to or above the configured limit. After every step the ledger's tokens and
    batches never exceed what is configured; once things settle (the provider keeps finishing batches, ticks
    come), every job ends and the ledger holds nothing: every leak was reclaimed."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.jobs: list[str] = []

    @initialize(limit=st.sampled_from([60, 120, 400]), quota=st.sampled_from([40, 120, 1000]),
                batches=st.sampled_from([2, 3, 100]))
    def configure(self, limit: int, quota: int, batches: int) -> None:
        self.ctx = make_context(Settings(enqueued_tokens_limit=limit, concurrent_batches_limit=batches,
                                         max_tokens_per_batch=30, lease_seconds=120, gemini_timeout_seconds=10,
                                         reconcile_grace_minutes=10_000), clock=self.clock)
        self.ctx.provider.quota_tokens = quota
        self.limit, self.batches = limit, batches

    def deliver(self, worker) -> None:
        settings = self.ctx.settings
        while self.delivered < len(self.ctx.publisher.messages):
            topic, data, _ = self.ctx.publisher.messages[self.delivered]
            self.delivered += 1
            payload = orjson.loads(data)
            if topic == settings.stage_topic:
                resume_submission(worker, payload["job_id"])
            elif topic == settings.complete_topic:
                complete_message(worker, payload["job_id"], payload.get("shard"))
            elif topic == settings.poll_topic:
                poll_work(worker, payload)

    delivered = 0

    def run(self, work) -> None:
        with contextlib.suppress(Crash, TransientError):
            work()

    @rule(records=st.integers(1, 8), priority=st.integers(0, 1))
    def submit(self, records: int, priority: int) -> None:
        name = f"incoming/f{len(self.jobs)}.jsonl"
        data = b"".join(orjson.dumps({"id": f"d{i}", "text": f"some words for record {i} " * 2}) + b"\n"
                        for i in range(records))
        info = self.ctx.blobs.put(f"gs://{self.ctx.settings.input_bucket}/{name}", data, "application/jsonl",
                                  {"priority": str(priority)})
        source = SourceObject(bucket=self.ctx.settings.input_bucket, name=name, generation=info.generation,
                              size=len(data), content_type="application/jsonl", metadata={"priority": str(priority)})
        self.run(lambda: self.jobs.append(submit_object(self.ctx.for_invocation(), source).job_id))

    @rule(calls=st.integers(1, 25))
    def a_worker_dies_in_a_tick(self, calls: int) -> None:
        worker, _ = mortal(self.ctx, calls)
        self.run(lambda: tick(worker))

    @rule(calls=st.integers(1, 25))
    def a_worker_dies_delivering(self, calls: int) -> None:
        worker, _ = mortal(self.ctx, calls)
        self.run(lambda: self.deliver(worker))

    @rule()
    def deliveries(self) -> None:
        self.run(lambda: self.deliver(self.ctx.for_invocation()))

    @rule(which=st.integers(0, 10))
    def a_batch_ends(self, which: int) -> None:
        live = self.ctx.provider.active()
        if live:
            live[which % len(live)]["state"] = ProviderState.SUCCEEDED

    @rule(minutes=st.sampled_from([0.5, 1.0, 3.0, 11.0]))
    def a_tick(self, minutes: float) -> None:
        self.clock.advance(minutes=minutes)
        self.run(lambda: tick(self.ctx.for_invocation()))

    @invariant()
    def never_over_the_configured_limits(self) -> None:
        for key in self.ctx.ledgers.list_keys():
            book = self.ctx.ledgers.get(key)
            assert book.tokens_held <= self.limit, (book.tokens_held, self.limit)
            assert book.batches_held <= self.batches, (book.batches_held, self.batches)
        assert self.ctx.provider.peak_tokens <= self.ctx.provider.quota_tokens

    def teardown(self) -> None:
        if not hasattr(self, "ctx"):
            return
        for _ in range(80):
            self.ctx.provider.finish_all()
            self.clock.advance(minutes=11)
            self.run(lambda: tick(self.ctx.for_invocation()))
            for _ in range(3):
                self.run(lambda: self.deliver(self.ctx.for_invocation()))
            if all(self.ctx.jobs.get(j).terminal and self.ctx.jobs.get(j).next_poll_at is None for j in self.jobs):
                break
        for job_id in self.jobs:
            job = self.ctx.jobs.get(job_id)
            assert job.terminal, (job_id, job.state, [(s.index, s.state) for s in self.ctx.jobs.shards(job_id)])
            shards = list(self.ctx.jobs.shards(job_id))
            assert all(s.state in FINAL_SHARD_STATES for s in shards)
            assert job.counts.succeeded == job.counts.total, "capacity never fails an item"
        self.clock.advance(seconds=self.ctx.settings.lease_seconds + 1)
        self.run(lambda: tick(self.ctx.for_invocation()))
        for key in self.ctx.ledgers.list_keys():
            book = self.ctx.ledgers.get(key)
            assert not book.holds, f"capacity leaked: {book.holds}"  # kept results count apart, until they expire
        refused = self.ctx.provider.refusals
        elapsed = (self.clock.now - NOW).total_seconds()
        assert refused <= 3 + elapsed / CEILING_SECONDS, (refused, elapsed, "refused creates stay few: no hammering")


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerMachine = LedgerMachine.TestCase


def test_shards_holding_tokens_are_the_ones_the_table_says():
    assert {ShardState.CREATING, ShardState.PENDING, ShardState.RUNNING} == SHARD_HOLDS_TOKENS
    assert not SHARD_HOLDS_TOKENS & FINAL_SHARD_STATES


def test_a_rate_limit_holds_off_as_asked_and_teaches_nothing():
    book = Book(limit=1_000_000)
    book.admit(0, 10_000, 0, 0.0, NOW)
    book.rate_limited(0, NOW, 5)
    assert not book.holds and book.learned_limit is None and book.refusals == 1
    assert book.admit(0, 10_000, 0, 0.0, NOW + timedelta(seconds=4)) == Admission.WAIT
    assert book.admit(0, 10_000, 0, 0.0, NOW + timedelta(seconds=5)) == Admission.ADMITTED
