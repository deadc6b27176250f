"""9. Scale, simulated (issue 14): the poller's tick and its workers over the in-memory fakes of the ports
(`tests/fakes.py`), with 10,000 active jobs whose due times are spread as in steady operation.

The state at the start (written directly into the fakes, as the services would have left it):
- 10,000 RUNNING jobs, staged (1 to 3 input shards each, 20,000 shards in all), uploaded over the last
  24 hours (their input objects are in the fake input bucket, inside the reconciler's window). Each job is
  next due at its hourly heartbeat (`poll.JOB_HEARTBEAT`): due times uniform over the coming hour.
- One ledger (Tier 3 tokens, 100 batches: the Gemini project's batch cap). The oldest shards are WRITTEN;
  then 100 shards hold the ledger's 100 batches, RUNNING at the fake provider, each due at its next poll
  as `Context.next_poll_at` spaces them (by size and age: a batch created 10 to 60 minutes ago is polled
  every 1 to 6 minutes); every other shard (most) is STAGED, waiting for capacity, and not due.
- Batches end as time passes (each was given a length of 10 to 60 minutes); each end is announced by a
  batch webhook, i.e. one `{"batches": [name]}` message on POLL_TOPIC, as the webhook function sends it.

Then the scheduler's minutes: the clock moves 60 s, the tick runs (`poll.tick`: due shards and due jobs
read and fanned out as messages, the ledger's queue admitted, reconciliation), and every message it
publishes on POLL_TOPIC (and each webhook's message) is delivered to `poll.poll_work` (what the `poll_worker` function does), including
the messages those publish (creates of admitted shards); messages to `complete` and `stage` are counted,
not delivered. Reads and writes are counted as Firestore bills them, by a subclass of the fake repository
(a query: the documents it returns, at least 1; a get or a transaction: the documents it reads;
`get_all`: one per document asked; a write: one per document written). The fake repository's queries scan
every document; the subclass keeps the fields they filter on in a small index so a query costs what it
returns (the documents themselves are still read from the fake, copy on read). Seconds are in-process
over in-memory fakes: they measure the services' own CPU, not Firestore's or the provider's latency.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from benchmarks.common import BenchRun, Section, Target, md_table

__all__ = ["NAME", "TITLE", "run"]

NAME = "scale"
TITLE = "10. Scale, simulated: 10,000 active jobs, one scheduler minute"
T = TypeVar("T")
IN_FLIGHT = 100
MINUTES = 3
START = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _repositories() -> tuple[type, type]:
    """The counting, indexed subclasses of the fakes (imported late: tests/ is not a dependency of make bench
    until this benchmark runs)."""
    from shared.domain.jobs import Job, Shard
    from shared.domain.ledger import Ledger
    from shared.ports import JobTx
    from tests.fakes import FakeJobRepository, FakeLedgerRepository

    def _when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text) if text else None

    class CountingJobs(FakeJobRepository):
        """Billing counters (`billed`) by what is being done (`phase`), and an index of the fields the
        queries filter on, refreshed on every write (`_bump` runs right after a document is stored)."""

        def __init__(self) -> None:
            super().__init__()
            self.billed: Counter = Counter()
            self.phase = "setup"
            self.job_due: dict[str, datetime] = {}
            self.shard_index: dict[tuple[str, int], dict[str, Any]] = {}

        def read(self, n: int = 1) -> None:
            self.billed[(self.phase, "reads")] += n

        def _bump(self, key: Any) -> str:
            self.billed[(self.phase, "writes")] += 1
            if isinstance(key, tuple):
                doc = orjson.loads(self.shard_docs[key])
                self.shard_index[key] = {"due": _when(doc.get("next_poll_at")), "state": doc["state"],
                                         "ledger": doc["ledger"], "order": (-doc["priority"], doc["fair_key"],
                                                                            doc["created_at"], key),
                                         "batch": doc.get("batch_name"), "tokens": doc["estimated_tokens"]}
            else:
                due = _when(orjson.loads(self.docs[key]).get("next_poll_at"))
                if due is None:
                    self.job_due.pop(key, None)
                else:
                    self.job_due[key] = due
            return super()._bump(key)

        # -- billed like Firestore
        def get(self, job_id: str) -> Job | None:
            self.read()
            return super().get(job_id)

        def get_shard(self, job_id: str, index: int) -> Shard | None:
            self.read()
            return super().get_shard(job_id, index)

        def update(self, job_id: str, change: Callable[[JobTx], T], *, shards: Iterable[int] = ()) -> tuple[JobTx, T]:
            wanted = list(shards)
            self.read(1 + len(wanted))
            return super().update(job_id, change, shards=wanted)

        def update_shard(self, job_id: str, index: int, change: Callable[[Shard], T]) -> tuple[Shard, T]:
            self.read()
            return super().update_shard(job_id, index, change)

        def exist(self, job_ids: list[str]) -> set[str]:
            self.read(len(job_ids))
            self.billed[(self.phase, "reconciler reads")] += len(job_ids)
            return super().exist(job_ids)

        def shards(self, job_id: str, *, states: Iterable[str] | None = None, limit: int | None = None) -> Iterator[Shard]:
            found = list(super().shards(job_id, states=states, limit=limit))
            self.read(max(len(found), 1))
            return iter(found)

        def marker(self, name: str) -> dict:
            self.read()
            return super().marker(name)

        def set_marker(self, name: str, value: dict) -> None:
            self.billed[(self.phase, "writes")] += 1
            super().set_marker(name, value)

        # -- queries through the index
        def due(self, now: datetime, limit: int) -> list[Job]:
            keys = sorted((due, key) for key, due in self.job_due.items() if due <= now)[:limit]
            self.read(max(len(keys), 1))
            with self._lock:
                return [self._job(key) for _, key in keys]

        def due_shards(self, now: datetime, limit: int) -> list[Shard]:
            keys = sorted((i["due"], key) for key, i in self.shard_index.items() if i["due"] and i["due"] <= now)[:limit]
            self.read(max(len(keys), 1))
            with self._lock:
                return [self._shard(key) for _, key in keys]

        def waiting_shards(self, ledger: str, limit: int) -> list[Shard]:
            keys = sorted(i["order"] for i in self.shard_index.values() if i["state"] == "STAGED" and i["ledger"] == ledger)
            head = [order[-1] for order in keys[:limit]]
            self.read(max(len(head), 1))
            self.billed[(self.phase, "queue reads")] += max(len(head), 1)
            with self._lock:
                return [self._shard(key) for key in head]

        def queue_ahead(self, ledger: str, priority: int, fair_key: float) -> tuple[int, int]:
            self.read()
            ahead = [i for i in self.shard_index.values() if i["state"] == "STAGED" and i["ledger"] == ledger
                     and (-i["order"][0] > priority or (-i["order"][0] == priority and i["order"][1] < fair_key))]
            return len(ahead), sum(i["tokens"] for i in ahead)

        def shard_of_batch(self, batch_name: str) -> Shard | None:
            key = next((k for k, i in self.shard_index.items() if i["batch"] == batch_name), None)
            self.read()
            with self._lock:
                return self._shard(key) if key else None

    class CountingLedgers(FakeLedgerRepository):
        def __init__(self, jobs: CountingJobs) -> None:
            super().__init__()
            self.jobs = jobs

        def get(self, key: str) -> Ledger | None:
            self.jobs.read()
            return super().get(key)

        def update(self, key: str, change: Callable[[Ledger], T]) -> tuple[Ledger, T]:
            self.jobs.read()
            before = self.docs.get(key)
            result = super().update(key, change)
            if self.docs.get(key) != before:
                self.jobs.billed[(self.jobs.phase, "writes")] += 1
            return result

        def list_keys(self) -> list[str]:
            keys = super().list_keys()
            self.jobs.read(max(len(keys), 1))
            return keys

    return CountingJobs, CountingLedgers


class _Publisher:
    """Keeps every published message; `take()` hands over those not yet delivered."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._taken = 0

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        self.messages.append((topic, data))
        return str(len(self.messages))

    def take(self) -> list[tuple[str, bytes]]:
        new, self._taken = self.messages[self._taken:], len(self.messages)
        return new


def _context(jobs_total: int) -> Any:
    from shared.config import Settings
    from shared.services.context import Context
    from tests.fakes import FakeBatchProvider, FakeBlobStore, FakeClock, FakeMonotonic

    clock = FakeClock(START)
    jobs_cls, ledgers_cls = _repositories()
    jobs = jobs_cls()
    settings = Settings(provider="fake", enqueued_tokens_limit=10_000_000, concurrent_batches_limit=IN_FLIGHT)
    return Context(jobs=jobs, ledgers=ledgers_cls(jobs), blobs=FakeBlobStore(clock),
                   providers={"fake": FakeBatchProvider(clock)}, publisher=_Publisher(), settings=settings,
                   clock=clock, monotonic=FakeMonotonic(clock), started=clock.now.timestamp())


def _seed(ctx: Any, jobs_total: int, seed: int = 5) -> dict[str, Any]:
    """The steady state described in the module docstring; returns facts about it."""
    from shared.domain.jobs import (
        Counts,
        FileRef,
        Job,
        JobState,
        Shard,
        ShardOutput,
        ShardState,
        SourceObject,
        Staging,
        job_id_for,
    )
    from shared.domain.ledger import Ledger
    from shared.domain.paths import JobPaths
    from shared.ports import ProviderState, StagedItem

    rng = random.Random(seed)
    settings, now = ctx.settings, ctx.clock()
    provider = ctx.providers["fake"]
    options = settings.default_options()
    ledger_key = provider.capabilities(options.model).ledger_key
    ledger = Ledger(key=ledger_key)
    ledger.configure(settings.enqueued_tokens_limit, settings.concurrent_batches_limit, None)
    bucket = settings.input_bucket
    shards: list[tuple[datetime, Job, int]] = []
    plans = []
    for n in range(jobs_total):
        arrived = now - timedelta(hours=24) * (1 - n / jobs_total)
        name = f"{settings.input_prefix}scale/file-{n:05d}.jsonl"
        info = ctx.blobs.put(f"gs://{bucket}/{name}", b'{"id": "x", "text": "y"}\n', "application/jsonl")
        ctx.blobs.objects[info.uri] = (ctx.blobs.objects[info.uri][0], _updated(info, arrived))
        source = SourceObject(bucket=bucket, name=name, generation=info.generation, size=info.size)
        count = rng.choice((1, 1, 2, 3))
        job = Job(job_id=job_id_for(bucket, name, info.generation), source=source, options=options,
                  state=JobState.RUNNING, created_at=arrived, updated_at=arrived, submitted_at=arrived,
                  deadline_at=arrived + timedelta(hours=settings.job_deadline_hours),
                  next_poll_at=now + timedelta(seconds=rng.uniform(0, 3600)), ledger=ledger_key,
                  staging=Staging(done=True, next_key=count * 3, segments=count, tokens=count * 30_000,
                                  fair_start=n * 60_000.0),
                  shard_count=count, open_shards=count, counts=Counts(total=count * 3))
        plans.append(job)
        shards += [(arrived, job, i) for i in range(count)]
    written = len(shards) // 10  # the oldest tenth already written
    running = set(range(written, written + IN_FLIGHT))
    docs: dict[str, list[Shard]] = {}
    for position, (arrived, job, index) in enumerate(shards):
        paths = JobPaths.for_source(job.source, settings.output_bucket, settings.output_prefix)
        records = paths.input_records(index)
        ctx.blobs.put(records, b"".join(orjson.dumps({"key": str(index * 3 + k), "id": f"d{k}", "text": f"text {k}",
                                                      "tokens": 10_000}) + b"\n" for k in range(3)))
        shard = Shard(job_id=job.job_id, index=index, records_uri=records, request_count=3, request_bytes=700,
                      file_bytes=700 + 3 * 9_280, estimated_tokens=30_000, ledger=ledger_key, priority=0,
                      fair_key=job.staging.fair_start + index * 30_000, created_at=arrived, updated_at=arrived)
        if position < written and index < job.shard_count - 1:  # every job keeps an open shard
            shard.state, shard.succeeded = ShardState.WRITTEN, 3
            shard.output = ShardOutput(embeddings=FileRef(uri=paths.embeddings(index), size=1),
                                       parquet=FileRef(uri=paths.parquet(index), size=1), succeeded=3)
            job.open_shards -= 1
            job.counts.succeeded += 3
        elif position in running:
            started = now - timedelta(minutes=rng.uniform(10, 60))
            length = timedelta(minutes=rng.uniform(10, 60))
            name = f"batches/scale-{position}"
            provider.files[f"files/scale-{position}"] = [StagedItem(key=str(index * 3 + k), text=f"text {k}") for k in range(3)]
            provider.batches[name] = {
                "display_name": f"{job.source.name} {shard.tag()}", "items": provider.files[f"files/scale-{position}"],
                "state": ProviderState.RUNNING, "tokens": 30_000, "create_time": started, "model": options.model,
                "priority": 0, "error": None, "dims": options.output_dimensionality, "input": f"files/scale-{position}",
                "done": 1, "ends_at": max(started + length, now + timedelta(seconds=rng.uniform(30, 1800))),
            }
            shard.state, shard.batch_name = ShardState.RUNNING, name
            shard.input_ref, shard.create_started_at, shard.succeeded, shard.pending = f"files/scale-{position}", started, 1, 2
            shard.next_poll_at = ctx.next_poll_at(now, size=3, age_seconds=(now - started).total_seconds(),
                                                  seconds_left=(now - started).total_seconds() * 2)
            shard.next_poll_at = now + (shard.next_poll_at - now) * rng.random()  # somewhere in its interval
            _, shard.reservation = ledger.admit(job.job_id, index, 30_000, shard.file_bytes, shard.fair_key, started)
        docs.setdefault(job.job_id, []).append(shard)
    jobs = ctx.jobs
    with jobs._lock:
        for job in plans:
            jobs.docs[job.job_id] = job.model_dump_json()
            jobs._bump(job.job_id)
            for shard in docs[job.job_id]:
                jobs.shard_docs[(job.job_id, shard.index)] = shard.model_dump_json()
                jobs._bump((job.job_id, shard.index))
    ledger.virtual_time = shards[written + IN_FLIGHT][1].staging.fair_start
    ctx.ledgers.docs[ledger_key] = ledger.model_dump_json()
    states = Counter(orjson.loads(d)["state"] for d in jobs.shard_docs.values())
    return {"jobs": len(plans), "shards": len(shards), "states": dict(states), "objects": len(ctx.blobs.objects)}


def _updated(info: Any, when: datetime) -> Any:
    from dataclasses import replace

    return replace(info, updated=when)


def _end_batches(ctx: Any) -> list[str]:
    """Batches whose time has come succeed (a batch created during the run is given 10 to 60 minutes)."""
    from shared.ports import ProviderState

    now, ended = ctx.clock(), []
    rng = random.Random(int(now.timestamp()))
    for name, batch in ctx.providers["fake"].batches.items():
        batch.setdefault("ends_at", now + timedelta(minutes=rng.uniform(10, 60)))  # created since
        if batch["state"] in (ProviderState.PENDING, ProviderState.RUNNING) and batch["ends_at"] <= now:
            batch["state"] = ProviderState.SUCCEEDED
            ended.append(name)
    return ended


def _minute(ctx: Any) -> dict[str, Any]:
    """One scheduler minute: the clock moves, batches end, the tick runs, its messages are delivered."""
    from shared.services import messages
    from shared.services.poll import poll_work, tick

    jobs, publisher, settings = ctx.jobs, ctx.publisher, ctx.settings
    ctx.clock.advance(seconds=60)
    ended = _end_batches(ctx)
    jobs.billed.clear()
    if ended:  # the batch webhooks of the minute: one message each, as the webhook function sends them
        for name in ended:
            messages.poll_batches(ctx, [name])
    calls_before = dict(ctx.providers["fake"].calls)
    jobs.phase = "tick"
    started = time.process_time()
    summary = tick(ctx.for_invocation())
    tick_seconds = time.process_time() - started
    jobs.phase = "workers"
    worker_seconds, per_message, topics, visited, hooks, steps = [], [], Counter(), 0, 0, Counter()
    pending = publisher.take()
    while pending:
        for topic, data in pending:
            topics[topic] += 1
            if topic != settings.poll_topic:
                continue
            payload = orjson.loads(data)
            before = sum(jobs.billed.values())
            began = time.process_time()
            result = poll_work(ctx.for_invocation(), payload)
            worker_seconds.append(time.process_time() - began)
            per_message.append(sum(jobs.billed.values()) - before)
            visited += len(payload.get("shards", [])) + len(payload.get("jobs", []))
            hooks += len(payload.get("batches", []))
            steps.update({k: v for k, v in result.to_dict().items() if isinstance(v, int) and v})
        pending = publisher.take()
    calls = {k: v - calls_before.get(k, 0) for k, v in ctx.providers["fake"].calls.items() if v - calls_before.get(k, 0)}
    billed = {f"{phase} {kind}": n for (phase, kind), n in jobs.billed.items()}
    return {"ended": len(ended), "hooks": hooks, "due_shards": summary.due_shards, "due_jobs": summary.due_jobs,
            "messages": summary.messages, "admitted": summary.admitted, "reconciled": summary.reconciled,
            "tick_errors": summary.errors, "visited": visited, "topics": dict(topics), "steps": dict(steps),
            "billed": billed, "calls": calls, "tick_seconds": tick_seconds, "worker_seconds": worker_seconds,
            "per_message": per_message}


def run(bench: BenchRun) -> Section:
    jobs_total = 2_000 if bench.quick else 10_000
    ctx = _context(jobs_total)
    began = time.perf_counter()
    world = _seed(ctx, jobs_total)
    print(f"  seeded {world['jobs']:,} jobs, {world['shards']:,} shards {world['states']} in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    minutes = []
    for number in range(MINUTES):
        minutes.append(_minute(ctx))
        m = minutes[-1]
        print(f"  minute {number + 1}: {m['due_shards']} due shards, {m['due_jobs']} due jobs, {m['visited']} visited, "
              f"{m['billed']}", flush=True)
    return _section(bench, world, minutes)


def _section(bench: BenchRun, world: dict[str, Any], minutes: list[dict[str, Any]]) -> Section:
    rows, worst = [], {"reads": 0.0, "writes": 0.0}
    for n, m in enumerate(minutes, 1):
        due = m["due_shards"] + m["due_jobs"]
        b = m["billed"]
        reads = b.get("tick reads", 0) + b.get("workers reads", 0)
        writes = b.get("tick writes", 0) + b.get("workers writes", 0)
        worst["reads"] = max(worst["reads"], reads / max(due, 1))
        worst["writes"] = max(worst["writes"], writes / max(due, 1))
        rows.append([
            n, m["ended"], f"{m['due_shards']} + {m['due_jobs']}", m["messages"], m["visited"],
            f"{b.get('tick reads', 0)} / {b.get('tick writes', 0)}", f"{b.get('workers reads', 0)} / {b.get('workers writes', 0)}",
            f"{b.get('tick reconciler reads', 0)} / {b.get('tick queue reads', 0) + b.get('workers queue reads', 0)}",
            f"{reads / max(due, 1):.2f} / {writes / max(due, 1):.2f}", m["admitted"],
            ", ".join(f"{k} {v}" for k, v in sorted(m["calls"].items())) or "none",
            f"{m['tick_seconds']:.2f}", f"{max(m['worker_seconds'], default=0):.2f} / {sum(m['worker_seconds']):.2f}",
            max(m["per_message"], default=0),
        ])
    first = minutes[0]
    due = first["due_shards"] + first["due_jobs"]
    steps = ", ".join(f"{k} {v}" for k, v in sorted(first["steps"].items()) if k not in ("seconds",))
    body = f"""
{world['jobs']:,} active jobs with {world['shards']:,} shards ({", ".join(f"{k} {v:,}" for k, v in
sorted(world['states'].items()))}), {world['objects']:,} objects in the fake buckets. Three scheduler
minutes in a row; per minute:

{md_table(["minute", "batches ended", "due shards + jobs", "messages", "due items visited by workers",
           "tick reads / writes", "workers reads / writes", "of the reads: reconciler / queue heads",
           "reads / writes per due item", "admitted",
           "provider calls", "tick CPU s", "worker CPU s, longest message / all", "most documents billed by one message"],
          rows)}

Steps taken in minute 1: {steps}. Messages published in minute 1 by topic: {first['topics']}.

Every due item the tick found was visited in the same minute ({first['visited']} of {due} in minute 1): the
tick reads due shards and due jobs with two queries (at most POLL_MAX_SHARDS / POLL_MAX_JOBS, 1,000 / 500)
and sends them out {bench_group_size()} per message, so its own work does not grow with the active jobs;
the workers' messages are independent and run on as many instances as the poll_worker function has.
A due item costs the tick's read of it and, in the worker, one write when only its poll time moves
(`replace_if_unchanged` over the tick's revision); a step that moves a shard (a batch ended: its capacity
released, the queue admitted, a create) costs more, in transactions on the shard, its job and the ledger.
Reads include the reconciler's (each tick lists one page of the input prefix, RECONCILE_MAX_OBJECTS =
2,000 objects, and reads the job of every object uploaded within its window, `exist`, whatever is due) and
the admission's (each `admit` reads the head of the ledger's queue, up to ADMIT_MAX_PER_TICK = 200 shard
documents, whenever it runs: at the tick, and at every batch end).
"""
    per_due = f"{worst['reads']:.2f} reads, {worst['writes']:.2f} writes"
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[Target(f"every due item visited within its scheduler minute ({world['jobs']:,} active jobs)",
                        all(m["visited"] >= m["due_shards"] + m["due_jobs"] for m in minutes),
                        f"minute 1: {first['visited']} of {due}; worst minute per due item: {per_due}")],
        plot={"minutes": [{"billed": m["billed"], "due": m["due_shards"] + m["due_jobs"]} for m in minutes]},
    )


def bench_group_size() -> int:
    from shared.config import Settings

    return Settings().poll_group_size


def plot(ax: Any, data: dict[str, Any]) -> None:
    kinds = ["tick reads", "workers reads", "tick writes", "workers writes", "tick reconciler reads"]
    minutes = data["minutes"]
    for k, kind in enumerate(kinds):
        ax.bar([i + k * 0.16 for i in range(len(minutes))], [m["billed"].get(kind, 0) / max(m["due"], 1) for m in minutes],
               0.16, label=kind)
    ax.set_xticks([i + 0.3 for i in range(len(minutes))], [f"minute {i + 1}" for i in range(len(minutes))])
    ax.set_ylabel("per due item")
    ax.set_title("9. 10,000 active jobs (fakes): documents billed per due item")
    ax.legend(fontsize=7)
