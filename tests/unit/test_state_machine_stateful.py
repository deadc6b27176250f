"""The use cases under any interleaving of deliveries, provider moves, ticks, cancels, crashes and zombies.

A hypothesis state machine over `tests/fakes.py`: one landed object, its finalize event delivered any
number of times; internal messages delivered in any order, again and again, or never; batches moved by the
provider however it likes; the scheduler ticking at any pace; a cancel at any moment; and the faults of the
issue's fault model:
- a worker dies after any port call (it makes no call afterwards: its leases lapse);
- a create reaches the provider but its answer is lost (the batch exists, the worker does not know);
- a create is refused for capacity (429: nothing made); a cancel fails;
- a worker pauses mid-way, loses its lease, and resumes later (a zombie), as a timed-out Cloud Function may;
- follow-up creates and cancels meet all of the above.

After every step:
- every item is accounted for exactly once: total == succeeded + failed + the items of open shards;
- every batch the provider holds is adopted by its shard, recoverable by its tag (its shard CREATING), or
  cancelled (checked while no zombie is paused: a paused worker may hold one in hand);
- the job document stays under its size bound, a terminal job never changes state again, and every event
  carries the job's one event id and final status.
Once the world settles (faults stop, batches finish, the scheduler keeps ticking, messages arrive) the job
ends with one event id, every embedded id once, every failed item in errors.jsonl, no batch left running
or unadopted, no capacity held, and no staging file left.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared.config import Settings
from shared.domain.jobs import (
    FINAL_SHARD_STATES,
    TERMINAL_JOB_STATES,
    ErrorInfo,
    Job,
    JobState,
    ShardState,
    SourceObject,
    job_id_for,
)
from shared.domain.paths import JobPaths
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.ports import ProviderState
from shared.services.cancel import cancel_job
from shared.services.complete import complete_message
from shared.services.poll import poll_work, tick
from shared.services.submit import resume_submission, submit_object
from tests.fakes import Crash, FakeClock, Life, Mortal, firestore_size, make_context, mortal

EVENTS = "embedding-events"
NAME = "incoming/docs.jsonl"
POISON = "POISON"
TAG = re.compile(r"\[(job-[0-9a-f]+)/s(\d+)a(\d+)\]$")
SETTLE_ROUNDS = 60
DOC_BOUND = 64 * 1024


def jsonl(texts: list[str]) -> bytes:
    return b"".join(orjson.dumps({"id": f"doc-{i}", "text": t}) + b"\n" for i, t in enumerate(texts))


class Zombie:
    """A worker that stops after `calls` port calls, as if frozen, and resumes when told: its lease lapses
    meanwhile and others take its work over. It runs in a thread; the machine waits while it runs."""

    def __init__(self, ctx: Any, calls: int, work: Callable[[Any], Any]):
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        life = Life()
        zombie = self
        count = [0]

        class Frozen(Mortal):
            def __getattr__(self, name: str) -> Any:
                call = super().__getattr__(name)
                if not callable(call):
                    return call

                def frozen(*args: Any, **kwargs: Any) -> Any:
                    result = call(*args, **kwargs)
                    count[0] += 1
                    if count[0] == calls:
                        zombie.paused.set()
                        zombie.resume.wait(timeout=30)
                    return result

                return frozen

        self.worker = ctx.__class__(
            jobs=Frozen(ctx.jobs, "jobs", life), ledgers=Frozen(ctx.ledgers, "ledgers", life),
            blobs=Frozen(ctx.blobs, "blobs", life),
            providers={n: Frozen(p, "provider", life) for n, p in ctx.providers.items()},
            publisher=Frozen(ctx.publisher, "publisher", life), settings=ctx.settings, clock=ctx.clock,
            monotonic=ctx.monotonic, started=ctx.monotonic(),
        )

        def run() -> None:
            try:
                work(self.worker)
            except (TransientError, PermanentError):
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the machine
                self.error = exc
            finally:
                self.paused.set()
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.paused.wait(timeout=30)

    def finish(self) -> None:
        self.resume.set()
        self.done.wait(timeout=30)
        if self.error is not None:
            raise self.error


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ctx = make_context(Settings(max_tokens_per_batch=8, max_item_attempts=2, max_batch_attempts=2,
                                         lease_seconds=120, gemini_timeout_seconds=10), clock=self.clock)
        self.provider = self.ctx.provider
        self.source: SourceObject | None = None
        self.job_id: str | None = None
        self.texts: list[str] = []
        self.ended: JobState | None = None
        self.a_worker_died = False
        self.zombie: Zombie | None = None

    # -- the world --------------------------------------------------------------------------------

    @initialize(records=st.integers(1, 6), poisoned=st.sets(st.integers(0, 5), max_size=2))
    def land_object(self, records: int, poisoned: set[int]) -> None:
        self.texts = [f"{POISON} text {i}" if i in poisoned else f"text number {i}" for i in range(records)]
        self.provider.failing_texts = {t for t in self.texts if t.startswith(POISON)}
        data = jsonl(self.texts)
        uri = f"gs://{self.ctx.settings.input_bucket}/{NAME}"
        info = self.ctx.blobs.put(uri, data, "application/jsonl")
        self.source = SourceObject(bucket=self.ctx.settings.input_bucket, name=NAME, generation=info.generation,
                                   size=len(data), content_type="application/jsonl")
        self.job_id = job_id_for(self.source.bucket, NAME, info.generation)

    def job(self) -> Job | None:
        return self.ctx.jobs.get(self.job_id)

    def run(self, work: Callable[[], Any]) -> None:
        """One delivery: what a retry can fix, or a dead worker, is expected; anything else is a bug."""
        try:
            work()
        except Crash:
            self.a_worker_died = True
        except TransientError:
            pass

    def messages(self) -> list[tuple[str, dict]]:
        settings = self.ctx.settings
        internal = (settings.stage_topic, settings.complete_topic, settings.poll_topic)
        return [(t, orjson.loads(d)) for t, d, _ in self.ctx.publisher.messages if t in internal]

    def deliver(self, worker: Any, topic: str, payload: dict) -> None:
        settings = worker.settings
        if topic == settings.stage_topic and "source" in payload:  # the reconciler found an upload with no job
            submit_object(worker, SourceObject.model_validate(payload["source"]))
        elif topic == settings.stage_topic:
            resume_submission(worker, payload["job_id"])
        elif topic == settings.complete_topic:
            complete_message(worker, payload["job_id"], payload.get("shard"))
        else:
            poll_work(worker, payload)

    def delivery(self, kind: str, pick: int) -> Callable[[Any], Any] | None:
        if kind == "submit":
            return lambda worker: submit_object(worker, self.source)
        if kind == "tick":
            return lambda worker: tick(worker)
        messages = self.messages()
        if not messages:
            return None
        topic, payload = messages[pick % len(messages)]
        return lambda worker: self.deliver(worker, topic, payload)

    # -- deliveries ---------------------------------------------------------------------------------

    @rule()
    def deliver_finalize(self) -> None:
        self.run(lambda: submit_object(self.ctx.for_invocation(), self.source))

    @rule(pick=st.integers(0, 40))
    def deliver_a_message(self, pick: int) -> None:
        work = self.delivery("message", pick)  # any of them, again and again: Pub/Sub redelivers
        if work is not None:
            self.run(lambda: work(self.ctx.for_invocation()))

    @rule(calls=st.integers(1, 40), kind=st.sampled_from(["submit", "tick", "message"]), pick=st.integers(0, 40))
    def crash_during_a_delivery(self, calls: int, kind: str, pick: int) -> None:
        work = self.delivery(kind, pick)
        if work is not None:
            worker, _ = mortal(self.ctx, calls)  # dies right after its `calls`-th port call
            self.run(lambda: work(worker))

    @precondition(lambda self: self.zombie is None)
    @rule(calls=st.integers(1, 30), kind=st.sampled_from(["submit", "message"]), pick=st.integers(0, 40))
    def a_worker_freezes(self, calls: int, kind: str, pick: int) -> None:
        work = self.delivery(kind, pick)
        if work is not None:
            self.zombie = Zombie(self.ctx, calls, work)

    @precondition(lambda self: self.zombie is not None)
    @rule()
    def the_frozen_worker_resumes_after_its_lease(self) -> None:
        self.clock.advance(seconds=self.ctx.settings.lease_seconds + 1)
        zombie, self.zombie = self.zombie, None
        zombie.finish()

    @rule()
    def the_next_create_answer_is_lost(self) -> None:
        self.provider.lose_answers = [TransientError("503 after the create reached the provider")]

    @rule()
    def the_next_create_is_refused_for_capacity(self) -> None:
        self.provider.create_errors = [CapacityExhausted("429 RESOURCE_EXHAUSTED")]

    @rule()
    def the_next_cancel_fails(self) -> None:
        self.provider.cancel_errors = [TransientError("cancel: 503")]

    @rule(state=st.sampled_from([ProviderState.RUNNING, ProviderState.SUCCEEDED, ProviderState.FAILED,
                                 ProviderState.EXPIRED]), which=st.integers(0, 7))
    def provider_moves_a_batch(self, state: ProviderState, which: int) -> None:
        live = [b for b in self.provider.batches.values() if b["state"] in (ProviderState.PENDING, ProviderState.RUNNING)]
        if live:
            batch = live[which % len(live)]
            batch["state"] = state
            if state in (ProviderState.FAILED, ProviderState.EXPIRED):
                batch["error"] = ErrorInfo(code=state.value, message=f"batch {state.value.lower()}")

    @rule()
    def poisoned_items_heal(self) -> None:
        self.provider.failing_texts = set()

    @rule(minutes=st.sampled_from([0.05, 1.0, 3.0, 16.0, 31.0, 60.0 * 80]))
    def scheduler_tick(self, minutes: float) -> None:
        self.clock.advance(minutes=minutes)
        self.run(lambda: tick(self.ctx.for_invocation()))

    @precondition(lambda self: self.job() is not None)
    @rule(now=st.integers(0, 3))
    def cancel(self, now: int) -> None:
        if now == 0:  # a quarter of the draws: otherwise most examples end cancelled early
            self.run(lambda: cancel_job(self.ctx.for_invocation(), self.job_id))

    @precondition(lambda self: self.job() is None)
    @rule()
    def cancel_of_an_unknown_job_is_not_found(self) -> None:
        try:
            cancel_job(self.ctx.for_invocation(), self.job_id)
        except NotFound:
            return
        raise AssertionError("cancelling a job that does not exist must raise NotFound")

    @rule()
    def publisher_fails_once(self) -> None:
        self.ctx.publisher.fail_next = TransientError("Pub/Sub unavailable")

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def at_most_one_job(self) -> None:
        assert len(self.ctx.jobs.docs) <= 1, list(self.ctx.jobs.docs)

    @invariant()
    def every_item_is_accounted_for_exactly_once(self) -> None:
        job = self.job()
        if job is None:
            return
        shards = list(self.ctx.jobs.shards(self.job_id))
        open_items = sum(s.request_count for s in shards if s.state not in FINAL_SHARD_STATES)
        counts = job.counts
        assert min(counts.total, counts.succeeded, counts.failed) >= 0, counts
        assert counts.succeeded + counts.failed + open_items == counts.total, (counts, [(s.index, s.state) for s in shards])
        assert counts.total in range(len(self.texts) + 1), counts
        assert job.open_shards == sum(1 for s in shards if s.state not in FINAL_SHARD_STATES)
        assert job.shard_count == len(shards)

    @invariant()
    def every_batch_is_adopted_recoverable_or_cancelled(self) -> None:
        if self.zombie is not None or self.job_id is None:
            return
        shards = {s.index: s for s in self.ctx.jobs.shards(self.job_id)}
        adopted = {s.batch_name for s in shards.values() if s.batch_name}
        for name, batch in self.provider.batches.items():
            match = TAG.search(batch["display_name"])
            assert match, f"a batch without its recovery tag: {batch['display_name']!r}"
            if name in adopted or batch["state"] in (ProviderState.CANCELLED, ProviderState.FAILED, ProviderState.EXPIRED):
                continue
            shard = shards.get(int(match.group(2)))
            assert shard is not None and shard.state == ShardState.CREATING and shard.tag() == match.group(0) \
                and shard.create_started_at is not None, f"batch {name} ({batch['state']}) is orphaned: {shard}"

    @invariant()
    def the_job_document_stays_small(self) -> None:
        if self.job_id in self.ctx.jobs.docs:
            assert firestore_size(orjson.loads(self.ctx.jobs.docs[self.job_id])) < DOC_BOUND

    @invariant()
    def a_terminal_job_stays_terminal(self) -> None:
        job = self.job()
        if job is None:
            return
        if self.ended is not None:
            assert job.state == self.ended, f"an ended job moved: {self.ended} -> {job.state}"
        elif job.state in TERMINAL_JOB_STATES:
            self.ended = job.state

    @invariant()
    def events_carry_the_one_event_id_and_the_final_status(self) -> None:
        events = self.ctx.publisher.on(EVENTS)
        if not events:
            return
        job = self.job()
        assert job is not None and job.terminal, "an event for a job that has not ended"
        assert {e["event_id"] for e in events} == {job.event_id}, [e["event_id"] for e in events]
        assert {e["status"] for e in events} == {job.state.value}

    # -- the end ---------------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.zombie is not None:
            self.the_frozen_worker_resumes_after_its_lease()
        if self.source is None:
            return
        self.settle()
        job = self.job()
        assert job is not None and job.terminal, f"the job did not end: {job and job.state}"
        assert job.event_published_at is not None, "the job ended without its event published"
        events = self.ctx.publisher.on(EVENTS)
        assert {e["event_id"] for e in events} == {job.event_id}
        assert all(e["status"] == job.state.value for e in events)
        self.check_outputs(job)

    def settle(self) -> None:
        """Faults stop; the scheduler ticks, the provider finishes, every message arrives."""
        self.ctx.publisher.fail_next = None
        self.provider.lose_answers, self.provider.create_errors, self.provider.cancel_errors = [], [], []
        self.run(lambda: submit_object(self.ctx.for_invocation(), self.source))
        delivered = 0
        for _ in range(SETTLE_ROUNDS):
            self.provider.finish_all()
            self.clock.advance(minutes=31)
            self.run(lambda: tick(self.ctx.for_invocation()))
            messages = self.messages()
            for topic, payload in messages[delivered:]:
                self.run(lambda t=topic, p=payload: self.deliver(self.ctx.for_invocation(), t, p))
            delivered = len(messages)
            job = self.job()
            if job is not None and job.terminal and job.event_published_at is not None and job.next_poll_at is None:
                return

    def check_outputs(self, job: Job) -> None:
        shards = list(self.ctx.jobs.shards(self.job_id))
        assert all(s.state in FINAL_SHARD_STATES for s in shards), [(s.index, s.state) for s in shards]
        adopted = {s.batch_name for s in shards if s.batch_name}
        for name, batch in self.provider.batches.items():
            assert batch["state"] not in (ProviderState.PENDING, ProviderState.RUNNING), f"{name} runs on"
            assert name in adopted or batch["state"] in (ProviderState.CANCELLED, ProviderState.FAILED,
                                                         ProviderState.EXPIRED), f"{name} was billed and never read"
        if job.state in (JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED):
            assert job.counts.succeeded + job.counts.failed == job.counts.total == len(self.texts), job.counts
            ids = [orjson.loads(line)["id"] for s in shards if s.output
                   for line in self.ctx.blobs.read(s.output.embeddings.uri).splitlines()]
            assert len(ids) == len(set(ids)) == job.counts.succeeded, f"an id embedded twice or lost: {sorted(ids)}"
            failed = []
            if job.output.errors:
                failed = [orjson.loads(line)["id"] for line in self.ctx.blobs.read(job.output.errors).splitlines()]
            assert len(failed) == job.counts.failed and not set(failed) & set(ids), (failed, ids)
            manifests = [uri for uri in self.ctx.blobs.objects if uri.endswith("manifest.json")]
            assert manifests == [job.output.manifest]
        ledger = self.ctx.ledgers.get(job.ledger) if job.ledger else None
        held = ledger.holds if ledger else {}
        assert not held, f"capacity still held: {held}"  # (results a dead worker did not delete expire apart)
        staging = JobPaths.for_source(job.source, self.ctx.settings.output_bucket, self.ctx.settings.output_prefix).staging
        assert not list(self.ctx.blobs.list(staging)), "staging files left after the job's event"


PipelineMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPipelineStateMachine = PipelineMachine.TestCase
