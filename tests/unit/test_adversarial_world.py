"""The adversary's world: the pipeline over `tests/fakes.py`, with the tools to break it on purpose.

No tests here; `test_adversarial_breaks.py` (guarantees the code does not keep yet) and
`test_adversarial_holds.py` (attacks it withstood) use them:
- `World`: a landed object's pipeline, driven as Pub/Sub and Cloud Scheduler would drive it: messages
  delivered at least once (a delivery that raises `TransientError` or dies is delivered again), ticks;
- `hooked(port, method, before=..., after=...)`: a port whose method runs a callback around the real call,
  once: how a test makes another worker act at one exact moment of a worker's run (the moment a zombie is
  frozen, the moment a concurrent worker slips in);
- `clean_end(world, job_id)`: everything a job must leave when it has ended;
- `Frozen`: a worker run in its own thread and frozen at one moment (a hook), resumed when the test says:
  how a test interleaves two workers that each need to be stopped mid-way.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import orjson

from shared.config import Settings
from shared.domain.jobs import FINAL_SHARD_STATES, SHARD_HOLDS_TOKENS, Job, SourceObject, job_id_for
from shared.domain.ledger import holder_id
from shared.domain.paths import JobPaths
from shared.errors import PermanentError, TransientError
from shared.ports import ProviderState
from shared.services.complete import complete_message
from shared.services.poll import poll_work, tick
from shared.services.submit import resume_submission, submit_object
from tests.fakes import Crash, FakeClock, make_context

EVENTS = "embedding-events"
LIVE = (ProviderState.PENDING, ProviderState.RUNNING)


def jsonl(n: int, prefix: str = "text number") -> bytes:
    return b"".join(orjson.dumps({"id": f"doc-{i}", "text": f"{prefix} {i}"}) + b"\n" for i in range(n))


class World:
    """One pipeline over the fakes, and the Pub/Sub and scheduler around it."""

    def __init__(self, settings: Settings | None = None):
        self.clock = FakeClock()
        self.ctx = make_context(settings or Settings(), clock=self.clock)
        self.provider = self.ctx.provider
        self.acked = 0  # messages before this index are in `queue` or were handled
        self.queue: list[tuple[str, dict]] = []  # published, not yet handled (or to be delivered again)

    # -- inputs ---------------------------------------------------------------------------------

    def upload(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> SourceObject:
        uri = f"gs://{self.ctx.settings.input_bucket}/{name}"
        info = self.ctx.blobs.put(uri, data, "application/jsonl", metadata)
        return SourceObject(bucket=self.ctx.settings.input_bucket, name=name, generation=info.generation,
                            size=len(data), content_type="application/jsonl", metadata=metadata or {})

    def submit(self, source: SourceObject, worker: Any = None) -> str:
        """The finalize event's delivery; returns the job id. A retryable failure or a death is delivered
        again later, as Eventarc would."""
        try:
            submit_object(worker or self.ctx.for_invocation(), source)
        except (TransientError, Crash):
            self.queue.append((self.ctx.settings.stage_topic, {"source": source.model_dump(mode="json")}))
        except PermanentError:
            pass  # acknowledged: the function records it and returns
        return job_id_for(source.bucket, source.name, source.generation)

    def step(self) -> None:
        """One moment of the world: the oldest pending message is delivered, or, when none is, a minute
        passes, the provider finishes its oldest running batch and the scheduler ticks."""
        if self.deliver_one():
            return
        live = self.live_batches()
        if live:
            self.provider.batches[live[0]]["state"] = ProviderState.SUCCEEDED
        self.tick(1.0, deliver=False)

    # -- Pub/Sub and the scheduler ----------------------------------------------------------------

    def handle(self, worker: Any, topic: str, payload: dict) -> None:
        settings = self.ctx.settings
        if topic == settings.stage_topic and "source" in payload:
            submit_object(worker, SourceObject.model_validate(payload["source"]))
        elif topic == settings.stage_topic:
            resume_submission(worker, payload["job_id"])
        elif topic == settings.complete_topic:
            complete_message(worker, payload["job_id"], payload.get("shard"))
        elif topic == settings.poll_topic:
            poll_work(worker, payload)

    def _collect(self) -> None:
        settings = self.ctx.settings
        internal = (settings.stage_topic, settings.complete_topic, settings.poll_topic)
        self.queue += [(t, orjson.loads(d)) for t, d, _ in self.ctx.publisher.messages[self.acked:] if t in internal]
        self.acked = len(self.ctx.publisher.messages)

    def deliver_one(self) -> bool:
        """Deliver the oldest pending message; False when none is pending. A delivery that fails with a
        retryable error or dies is delivered again later (Pub/Sub at least once)."""
        self._collect()
        if not self.queue:
            return False
        topic, payload = self.queue.pop(0)
        try:
            self.handle(self.ctx.for_invocation(), topic, payload)
        except (TransientError, Crash):
            self.queue.append((topic, payload))
        except PermanentError:
            pass  # acknowledged: the function records it and returns
        return True

    def deliver(self, limit: int = 200) -> None:
        """Deliver what is pending and what that publishes (at most `limit` deliveries)."""
        for _ in range(limit):
            if not self.deliver_one():
                return

    def deliver_topic(self, topic: str) -> None:
        """Deliver the pending messages of one topic only (the others wait)."""
        self._collect()
        mine = [m for m in self.queue if m[0] == topic]
        self.queue = [m for m in self.queue if m[0] != topic]
        for message in mine:
            self.handle(self.ctx.for_invocation(), *message)

    def drop_pending(self) -> None:
        """Messages published so far are lost."""
        self._collect()
        self.queue = []

    def tick(self, minutes: float = 1.0, deliver: bool = True) -> None:
        self.clock.advance(minutes=minutes)
        tick(self.ctx.for_invocation())
        if deliver:
            self.deliver()

    def settle(self, rounds: int = 12, minutes: float = 20.0, finish: bool = True) -> None:
        """Faults stop; the provider finishes every batch; the scheduler ticks; messages arrive."""
        self.ctx.publisher.fail_next = None
        self.provider.lose_answers, self.provider.create_errors, self.provider.cancel_errors = [], [], []
        for _ in range(rounds):
            if finish:
                self.provider.finish_all()
            self.tick(minutes)

    # -- looking -------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return self.ctx.jobs.get(job_id)

    def shards(self, job_id: str) -> list:
        return list(self.ctx.jobs.shards(job_id))

    def holds(self, job: Job) -> dict:
        ledger = self.ctx.ledgers.get(job.ledger) if job.ledger else None
        return dict(ledger.holds) if ledger else {}

    def staging_left(self, job: Job) -> list[str]:
        paths = JobPaths.for_source(job.source, self.ctx.settings.output_bucket, self.ctx.settings.output_prefix)
        return [blob.uri for blob in self.ctx.blobs.list(paths.staging)]

    def live_batches(self) -> list[str]:
        return [name for name, batch in self.provider.batches.items() if batch["state"] in LIVE]

    def events(self, job_id: str) -> list[dict]:
        return [e for e in self.ctx.publisher.on(EVENTS) if e["job_id"] == job_id]


def uncounted_in_flight(world: World, job_id: str) -> list[int]:
    """Shards that may have a batch at the provider (CREATING, PENDING, RUNNING) without a hold in their
    ledger: capacity the ledger does not count."""
    job = world.job(job_id)
    holds = world.holds(job)
    return [s.index for s in world.shards(job_id)
            if s.state in SHARD_HOLDS_TOKENS and holder_id(job_id, s.index, s.reservation or "") not in holds]


def orphans(world: World) -> list[str]:
    """Batches the provider holds that no shard adopted and that did not end without results: billed, and
    never read (or still running)."""
    adopted = {s.batch_name for job_id in world.ctx.jobs.docs for s in world.shards(job_id) if s.batch_name}
    return [name for name, batch in world.provider.batches.items()
            if name not in adopted and batch["state"] not in (ProviderState.CANCELLED, ProviderState.FAILED,
                                                               ProviderState.EXPIRED)]


def clean_end(world: World, job_id: str) -> list[str]:
    """What is wrong with an ended job: empty when it ended cleanly."""
    job = world.job(job_id)
    shards = world.shards(job_id)
    wrong = []
    if not job.terminal:
        wrong.append(f"the job is {job.state}")
    if job.event_published_at is None or len({e["event_id"] for e in world.events(job_id)}) != 1:
        wrong.append(f"events: {[e['event_id'] for e in world.events(job_id)]}")
    if job.next_poll_at is not None:
        wrong.append("the job is still due")
    if not all(s.state in FINAL_SHARD_STATES for s in shards) or job.open_shards:
        wrong.append(f"open shards: {[(s.index, s.state.value) for s in shards if not s.final]} "
                     f"(open_shards={job.open_shards})")
    counts = job.counts
    if counts.succeeded + counts.failed != counts.total:
        wrong.append(f"items unaccounted for: {counts}")
    if world.live_batches():
        wrong.append(f"batches running on: {world.live_batches()}")
    if orphans(world):
        wrong.append(f"batches no shard adopted: {orphans(world)}")
    if world.holds(job):
        wrong.append(f"capacity held: {sorted(world.holds(job))}")
    if world.staging_left(job):
        wrong.append(f"staging left: {world.staging_left(job)}")
    return wrong


# -- one moment of one worker -------------------------------------------------------------------------


class Hooked:
    """A port whose `method` runs `before(*args)` or `after(result, *args)` around its real call, the first
    time `when(*args)` (or `when(result, *args)` after) is true. Everything else is the port itself."""

    def __init__(self, port: Any, method: str, *, before: Callable | None = None, after: Callable | None = None,
                 when: Callable[..., bool] = lambda *_: True):
        self._port, self._method, self._before, self._after, self._when = port, method, before, after, when
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._port, name)
        if name != self._method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._before is not None and not self.fired and self._when(*args, **kwargs):
                self.fired = True
                self._before(*args, **kwargs)
            result = real(*args, **kwargs)
            if self._after is not None and not self.fired and self._when(result, *args, **kwargs):
                self.fired = True
                self._after(result, *args, **kwargs)
            return result

        return call


def worker_with(world: World, **ports: Any) -> Any:
    """A fresh worker (its own lease owner) whose named ports are replaced (`jobs=Hooked(...)`, ...)."""
    return dataclasses.replace(world.ctx.for_invocation(), **ports)


# -- a worker frozen mid-way while others run ---------------------------------------------------------


class Frozen:
    """A worker run in a thread of its own and frozen at one moment of its run (inside one port call, via
    `Hooked(..., before=frozen.here)` or `after=frozen.here`), while the test moves other workers; `resume()`
    lets it run to its end. Deterministic: at any time only one of the two runs.

        frozen = Frozen(lambda: admit(worker_b, key, inline=False))   # worker_b's hook calls frozen.here
        frozen.start()            # returns once B is frozen (or has ended)
        ...                       # other workers act
        frozen.resume()           # B runs on to its end; returns its result, or raises what it raised
    """

    TIMEOUT = 20.0

    def __init__(self, work: Callable[[], Any]):
        self._work = work
        self._frozen, self._go, self._ended = threading.Event(), threading.Event(), threading.Event()
        self._outcome: tuple[bool, Any] = (False, None)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def here(self, *_: Any, **__: Any) -> None:
        """The hook's callback: freeze until resumed."""
        self._frozen.set()
        if not self._go.wait(self.TIMEOUT):
            raise Crash("never resumed")

    def _run(self) -> None:
        try:
            self._outcome = (True, self._work())
        except BaseException as exc:  # noqa: BLE001 - handed to `resume`
            self._outcome = (False, exc)
        finally:
            self._ended.set()
            self._frozen.set()

    def start(self) -> Frozen:
        self._thread.start()
        assert self._frozen.wait(self.TIMEOUT), "the worker never reached its frozen moment"
        return self

    @property
    def reached(self) -> bool:
        """Whether it froze at its moment (False: it ended without reaching it)."""
        return self._frozen.is_set() and not self._ended.is_set()

    def resume(self) -> Any:
        self._go.set()
        assert self._ended.wait(self.TIMEOUT), "the worker did not end once resumed"
        self._thread.join(self.TIMEOUT)
        ok, value = self._outcome
        if not ok:
            raise value
        return value
