"""The use cases under any interleaving of deliveries, provider moves, ticks, cancels and crashes.

A hypothesis state machine over `tests/fakes.py`: one landed object, its finalize event delivered any
number of times, batches moved by the provider however it likes, the scheduler ticking at any pace,
complete messages delivered twice or never, a cancel at any moment, the publisher failing once, and
workers dying after any port call (a dead worker makes no call at all afterwards: its lease is not
released, it lapses). Whatever happens:

- there is at most one job, and never two batches for one shard attempt (its `[job/sNaM]` tag);
- counts never exceed the total, and a terminal job never changes state again;
- every completion event carries the job's one `event_id` and its final status; once the world settles
  (batches finish, the scheduler keeps ticking, complete messages arrive) the job ends and exactly one
  event id was published (repeats only after a worker died between publishing and recording it);
- every embedded id is embedded once, and the staging files are gone, even when a worker died half way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared.config import Settings
from shared.domain.jobs import TERMINAL_JOB_STATES, ErrorInfo, Job, JobState, SourceObject, job_id_for
from shared.domain.paths import JobPaths
from shared.errors import NotFound, TransientError
from shared.ports import ProviderState
from shared.services.cancel import cancel_job
from shared.services.complete import complete_job
from shared.services.poll import poll_due_jobs
from shared.services.submit import submit_object
from tests.fakes import Crash, FakeClock, make_context, mortal

EVENTS = "embedding-events"
COMPLETE = "embedding-complete"
NAME = "incoming/docs.jsonl"
POISON = "POISON"
TAG = re.compile(r"\[(job-[0-9a-f]+)/s(\d+)a(\d+)\]$")
SETTLE_ROUNDS = 40


def jsonl(texts: list[str]) -> bytes:
    return b"".join(orjson.dumps({"id": f"doc-{i}", "text": t}) + b"\n" for i, t in enumerate(texts))


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ctx = make_context(Settings(max_requests_per_batch=2, max_item_attempts=2, max_batch_attempts=2,
                                         lease_seconds=60), clock=self.clock)
        self.source: SourceObject | None = None
        self.job_id: str | None = None
        self.texts: list[str] = []
        self.ended: JobState | None = None
        self.a_worker_died = False

    # -- the world --------------------------------------------------------------------------------

    @initialize(records=st.integers(1, 5), poisoned=st.sets(st.integers(0, 4), max_size=2))
    def land_object(self, records: int, poisoned: set[int]) -> None:
        self.texts = [f"{POISON} text {i}" if i in poisoned else f"text number {i}" for i in range(records)]
        self.ctx.provider.failing_texts = {t for t in self.texts if t.startswith(POISON)}
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

    # -- deliveries ---------------------------------------------------------------------------------

    @rule()
    def deliver_finalize(self) -> None:
        self.run(lambda: submit_object(self.ctx.for_invocation(), self.source))

    @rule(calls=st.integers(1, 40), delivery=st.sampled_from(["submit", "poll", "complete"]))
    def crash_during_a_delivery(self, calls: int, delivery: str) -> None:
        worker, _ = mortal(self.ctx, calls)  # dies right after its `calls`-th port call
        if delivery == "submit":
            self.run(lambda: submit_object(worker, self.source))
        elif delivery == "poll":
            self.run(lambda: poll_due_jobs(worker))
        elif self.job() is not None:
            self.run(lambda: complete_job(worker, self.job_id))

    @rule()
    def provider_dies_right_after_create(self) -> None:
        self.ctx.provider.crash_after_create = Crash("connection lost after the batch was created")
        self.run(lambda: submit_object(self.ctx.for_invocation(), self.source))
        self.run(lambda: poll_due_jobs(self.ctx))
        self.ctx.provider.crash_after_create = None

    @rule(state=st.sampled_from([ProviderState.RUNNING, ProviderState.SUCCEEDED, ProviderState.FAILED,
                                 ProviderState.EXPIRED]), which=st.integers(0, 7))
    def provider_moves_a_batch(self, state: ProviderState, which: int) -> None:
        live = [b for b in self.ctx.provider.batches.values()
                if b["state"] in (ProviderState.PENDING, ProviderState.RUNNING)]
        if live:
            batch = live[which % len(live)]
            batch["state"] = state
            if state in (ProviderState.FAILED, ProviderState.EXPIRED):
                batch["error"] = ErrorInfo(code=state.value, message=f"batch {state.value.lower()}")

    @rule()
    def poisoned_items_heal(self) -> None:
        self.ctx.provider.failing_texts = set()

    @rule(minutes=st.sampled_from([0.05, 1.0, 2.0, 16.0, 31.0, 60.0 * 80]))
    def scheduler_tick(self, minutes: float) -> None:
        self.clock.advance(minutes=minutes)
        self.run(lambda: poll_due_jobs(self.ctx))

    @rule(pick=st.integers(0, 20))
    def deliver_a_complete_message(self, pick: int) -> None:
        messages = self.ctx.publisher.on(COMPLETE)
        if messages:  # any of them, again and again: Pub/Sub redelivers
            job_id = messages[pick % len(messages)]["job_id"]
            self.run(lambda: complete_job(self.ctx.for_invocation(), job_id))

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
    def one_batch_per_shard_attempt(self) -> None:
        tags = Counter()
        for batch in self.ctx.provider.batches.values():
            match = TAG.search(batch["display_name"])
            assert match, f"a batch without its recovery tag: {batch['display_name']!r}"
            tags[match.groups()] += 1
        doubled = {tag: n for tag, n in tags.items() if n > 1}
        assert not doubled, f"more than one batch for a shard attempt: {doubled}"

    @invariant()
    def counts_within_total(self) -> None:
        job = self.job()
        if job is None:
            return
        counts = job.counts
        assert min(counts.total, counts.succeeded, counts.failed, counts.input_problems) >= 0, counts
        assert counts.succeeded + counts.failed <= counts.total, counts
        assert counts.total in (0, len(self.texts)), counts

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
        if self.source is None:
            return
        self.settle()
        job = self.job()
        assert job is not None and job.terminal, f"the job did not end: {job and job.state}"
        assert job.event_published_at is not None, "the job ended without its event published"
        events = self.ctx.publisher.on(EVENTS)
        assert {e["event_id"] for e in events} == {job.event_id}
        assert all(e["status"] == job.state.value for e in events)
        if not self.a_worker_died:
            assert len(events) == 1, f"{len(events)} events without any worker dying"
        self.check_outputs(job)

    def settle(self) -> None:
        """Faults stop; the scheduler ticks, the provider finishes, complete messages arrive."""
        self.ctx.publisher.fail_next = None
        self.ctx.provider.crash_after_create = None
        self.run(lambda: submit_object(self.ctx.for_invocation(), self.source))
        delivered = 0
        for _ in range(SETTLE_ROUNDS):
            self.ctx.provider.finish_all()
            self.clock.advance(minutes=31)
            self.run(lambda: poll_due_jobs(self.ctx))
            messages = self.ctx.publisher.on(COMPLETE)
            for message in messages[delivered:]:
                self.run(lambda message=message: complete_job(self.ctx.for_invocation(), message["job_id"]))
            delivered = len(messages)
            job = self.job()
            if job is not None and job.terminal and job.event_published_at is not None:
                return

    def check_outputs(self, job: Job) -> None:
        if job.state in (JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED):
            assert job.counts.succeeded + job.counts.failed == job.counts.total == len(self.texts), job.counts
            ids = [orjson.loads(line)["id"] for uri in job.output.embeddings
                   for line in self.ctx.blobs.read(uri).splitlines()]
            assert len(ids) == len(set(ids)), f"an id embedded twice: {sorted(ids)}"
            assert len(ids) == job.counts.succeeded
            assert set(ids) <= {f"doc-{i}" for i in range(len(self.texts))}
            manifests = [uri for uri in self.ctx.blobs.objects if uri.endswith("manifest.json")]
            assert manifests == [job.output.manifest]
        staging = JobPaths.for_source(job.source, self.ctx.settings.output_bucket,
                                      self.ctx.settings.output_prefix).staging
        assert not list(self.ctx.blobs.list(staging)), "staging files left after the job's event"


PipelineMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPipelineStateMachine = PipelineMachine.TestCase
