"""4. Poller: Firestore reads and writes per due item with 1,000 active jobs, in the Firestore emulator.

1,000 RUNNING jobs, each with one shard whose batch runs (a RUNNING shard document, its capacity held in
the ledger since 10 minutes): 100 shards due (50 whose batch progressed since their last poll, 50
unchanged), 900 not due; 20 jobs due at their hourly heartbeat, 980 not due. One scheduler tick
(`poll.tick`: two due queries, the messages, the ledger's reconciliation and admission, the reconciler's
page of uploads), then every message it published on POLL_TOPIC delivered to `poll.poll_work` (what the
`poll_worker` function does), in this process; then a second tick at once, with nothing due.

Reads and writes are counted as Firestore bills them by subclasses of the pipeline's own Firestore
repositories (a query: the documents it returns, at least 1; a get: 1; a transaction: the documents it
reads, and the documents it writes; a conditional write: 1). The provider answers `get_batch` at once
(a scripted port: RUNNING, with the progress the benchmark chose); messages are captured in-process, not
published (the stack's ticker is paused and its Firestore wiped afterwards, so no function of the stack
meets these documents).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from benchmarks.common import BenchRun, Section, Target, UnusedProvider, md_table, wipe_firestore
from shared.adapters.firestore_jobs import FirestoreJobRepository, FirestoreLedgerRepository, _to_document
from shared.domain.jobs import Job, Shard
from shared.domain.ledger import Ledger
from shared.ports import JobTx, ProviderBatch, ProviderState

__all__ = ["NAME", "TITLE", "run"]

NAME = "poller"
TITLE = "4. Poller: Firestore reads and writes per due item with 1,000 active jobs"
T = TypeVar("T")
REQUESTS = 1000


class Billing:
    """Reads and writes by the phase they happen in."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.phase = "setup"

    def read(self, n: int = 1) -> None:
        self.counts[(self.phase, "reads")] += n

    def write(self, n: int = 1) -> None:
        self.counts[(self.phase, "writes")] += n


class CountingJobs(FirestoreJobRepository):
    def __init__(self, client: Any, collection: str, billing: Billing):
        super().__init__(client, collection)
        self.billing = billing

    def get(self, job_id: str) -> Job | None:
        self.billing.read()
        return super().get(job_id)

    def get_shard(self, job_id: str, index: int) -> Shard | None:
        self.billing.read()
        return super().get_shard(job_id, index)

    def update(self, job_id: str, change: Callable[[JobTx], T], *, shards: Iterable[int] = ()) -> tuple[JobTx, T]:
        wanted = list(shards)
        written = [0]

        def counted(tx: JobTx) -> T:
            before = (_to_document(tx.job), [_to_document(s) if s else None for s in tx.shards.values()])
            result = change(tx)
            after = (_to_document(tx.job), [_to_document(s) if s else None for s in tx.shards.values()])
            written[0] = (after[0] != before[0]) + sum(a != b for a, b in zip(after[1], before[1], strict=True)) \
                + len(tx.added)
            return result

        outcome = super().update(job_id, counted, shards=wanted)
        self.billing.read(1 + len(wanted))
        self.billing.write(written[0])
        return outcome

    def update_shard(self, job_id: str, index: int, change: Callable[[Shard], T]) -> tuple[Shard, T]:
        changed = [False]

        def counted(shard: Shard) -> T:
            before = _to_document(shard)
            result = change(shard)
            changed[0] = _to_document(shard) != before
            return result

        outcome = super().update_shard(job_id, index, counted)
        self.billing.read()
        self.billing.write(changed[0])
        return outcome

    def replace_if_unchanged(self, job: Job) -> bool:
        written = super().replace_if_unchanged(job)
        self.billing.write(written)
        return written

    def replace_shard_if_unchanged(self, shard: Shard) -> bool:
        written = super().replace_shard_if_unchanged(shard)
        self.billing.write(written)
        return written

    def _billed(self, found: list[Any]) -> list[Any]:
        self.billing.read(max(len(found), 1))
        return found

    def due(self, now: datetime, limit: int) -> list[Job]:
        return self._billed(super().due(now, limit))

    def due_shards(self, now: datetime, limit: int) -> list[Shard]:
        return self._billed(super().due_shards(now, limit))

    def waiting_shards(self, ledger: str, limit: int) -> list[Shard]:
        return self._billed(super().waiting_shards(ledger, limit))

    def shards(self, job_id: str, *, states: Iterable[str] | None = None, limit: int | None = None) -> Iterator[Shard]:
        return iter(self._billed(list(super().shards(job_id, states=states, limit=limit))))

    def exist(self, job_ids: list[str]) -> set[str]:
        self.billing.read(len(job_ids))
        return super().exist(job_ids)

    def marker(self, name: str) -> dict:
        self.billing.read()
        return super().marker(name)

    def set_marker(self, name: str, value: dict) -> None:
        self.billing.write()
        super().set_marker(name, value)


class CountingLedgers(FirestoreLedgerRepository):
    def __init__(self, client: Any, collection: str, billing: Billing):
        super().__init__(client, collection)
        self.billing = billing

    def get(self, key: str) -> Ledger | None:
        self.billing.read()
        return super().get(key)

    def update(self, key: str, change: Callable[[Ledger], T]) -> tuple[Ledger, T]:
        changed = [False]

        def counted(ledger: Ledger) -> T:
            before = _to_document(ledger)
            result = change(ledger)
            changed[0] = _to_document(ledger) != before
            return result

        outcome = super().update(key, counted)
        self.billing.read()
        self.billing.write(changed[0])
        return outcome

    def list_keys(self) -> list[str]:
        keys = super().list_keys()
        self.billing.read(max(len(keys), 1))
        return keys


class ScriptedProvider(UnusedProvider):
    """`get_batch` answers at once: RUNNING, with `progress(name)` items done."""

    def __init__(self, progress: Callable[[str], int]):
        self.progress = progress
        self.gets = 0

    def get_batch(self, name: str) -> ProviderBatch:
        self.gets += 1
        done = self.progress(name)
        return ProviderBatch(name=name, state=ProviderState.RUNNING, total=REQUESTS, succeeded=done,
                             pending=REQUESTS - done)


class Captured:
    """A publisher that keeps the messages instead of sending them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        self.messages.append((topic, data))
        return str(len(self.messages))


def _seed(client: Any, collection: str, ledgers: str, total: int, due_shards: int, due_jobs: int, bucket: str) -> str:
    """`total` RUNNING jobs with one RUNNING shard each, and their ledger; written in batches of 500 (setup,
    not counted). Returns the ledger's key."""
    from shared.adapters.firestore_jobs import shards_collection
    from shared.adapters.gemini_provider import GEMINI_MODELS
    from shared.config import Settings
    from shared.domain.jobs import Counts, JobState, ShardState, SourceObject, Staging, shard_doc_id

    now = datetime.now(UTC)
    settings = Settings()
    options = settings.default_options()
    key = GEMINI_MODELS[options.model].ledger_key
    ledger = Ledger(key=key)
    ledger.configure(10**12, 10**6, None)
    writer = client.batch()
    for i in range(total):
        source = SourceObject(bucket=bucket, name=f"manual/bench/poller-{i:04d}.jsonl", generation="1", size=10**6)
        job = Job(
            job_id=f"job-bench-poller-{i:04d}", source=source, options=options, state=JobState.RUNNING,
            created_at=now - timedelta(minutes=10), updated_at=now - timedelta(minutes=1),
            submitted_at=now - timedelta(minutes=10), deadline_at=now + timedelta(hours=72), ledger=key,
            next_poll_at=now - timedelta(seconds=30 + i) if i < due_jobs else now + timedelta(minutes=5 + i / 20),
            staging=Staging(done=True, next_key=REQUESTS, segments=1), shard_count=1, open_shards=1,
            counts=Counts(total=REQUESTS), first_admitted_at=now - timedelta(minutes=10),
        )
        started = now - timedelta(minutes=10)
        shard = Shard(
            job_id=job.job_id, index=0, state=ShardState.RUNNING, records_uri=f"gs://x/poller-{i:04d}/records-000000.jsonl",
            request_count=REQUESTS, request_bytes=REQUESTS * 300, estimated_tokens=30_000, ledger=key, reserved=True,
            batch_name=f"batches/bench-{i:04d}", input_ref=f"files/bench-{i:04d}", create_started_at=started,
            pending=REQUESTS, created_at=started, updated_at=started,
            next_poll_at=now - timedelta(seconds=30 + i) if i < due_shards else now + timedelta(seconds=60 + i),
        )
        ledger.admit(job.job_id, 0, 30_000, 0, 0.0, started)
        job_ref = client.collection(collection).document(job.job_id)
        writer.set(job_ref, _to_document(job))
        writer.set(job_ref.collection(shards_collection(collection)).document(shard_doc_id(0)), _to_document(shard))
        if (i + 1) % 250 == 0:
            writer.commit()
            writer = client.batch()
    writer.set(client.collection(ledgers).document(key), _to_document(ledger))
    writer.commit()
    return key


def _step(ctx: Any, billing: Billing, provider: ScriptedProvider, captured: Captured) -> dict[str, Any]:
    """One tick, then every message it published delivered to the poll worker."""
    from shared.services.poll import poll_work, tick

    billing.counts.clear()
    gets = provider.gets
    billing.phase = "tick"
    started = time.perf_counter()
    summary = tick(ctx.for_invocation())
    tick_seconds = time.perf_counter() - started
    billing.phase = "workers"
    worker = Counter()
    began = time.perf_counter()
    for topic, data in list(captured.messages):
        if topic == ctx.settings.poll_topic:
            result = poll_work(ctx.for_invocation(), orjson.loads(data))
            worker.update({k: v for k, v in result.to_dict().items() if isinstance(v, int)})
    captured.messages.clear()
    counts = {f"{phase} {kind}": n for (phase, kind), n in billing.counts.items()}
    return {"due_shards": summary.due_shards, "due_jobs": summary.due_jobs, "messages": summary.messages,
            "tick_errors": summary.errors, "worker": dict(worker), "counts": counts, "gets": provider.gets - gets,
            "tick_seconds": tick_seconds, "worker_seconds": time.perf_counter() - began}


def run(bench: BenchRun) -> Section:
    from google.cloud import firestore

    from shared.bootstrap import build_context
    from shared.config import Settings

    total, due_shards, due_jobs = (200, 20, 5) if bench.quick else (1000, 100, 20)
    stack = bench.stack
    stack.reset()
    settings = Settings(input_prefix="manual/")
    moved = {f"batches/bench-{i:04d}" for i in range(0, due_shards, 2)}  # every other due shard progressed
    provider = ScriptedProvider(lambda name: REQUESTS // 2 if name in moved else 0)
    client = firestore.Client()
    billing = Billing()
    captured = Captured()
    ctx = replace(build_context(settings), jobs=CountingJobs(client, settings.jobs_collection, billing),
                  ledgers=CountingLedgers(client, settings.ledgers_collection, billing),
                  providers={"gemini": provider}, publisher=captured)
    with stack.ticker_paused():
        try:
            _seed(client, settings.jobs_collection, settings.ledgers_collection, total, due_shards, due_jobs,
                  stack.env["INPUT_BUCKET"])
            first = _step(ctx, billing, provider, captured)
            second = _step(ctx, billing, provider, captured)
        finally:
            wipe_firestore(stack)  # before the ticker resumes: the stack's poller must not meet these documents
    if first["due_shards"] != due_shards or first["due_jobs"] != due_jobs or first["tick_errors"]:
        raise RuntimeError(f"unexpected tick: {first}")
    return _section(bench, total, due_shards, due_jobs, len(moved), first, second)


def _section(bench: BenchRun, total: int, due_shards: int, due_jobs: int, changed: int, first: dict[str, Any],
             second: dict[str, Any]) -> Section:
    due = due_shards + due_jobs
    c1, c2 = first["counts"], second["counts"]
    reads = c1.get("tick reads", 0) + c1.get("workers reads", 0)
    writes = c1.get("tick writes", 0) + c1.get("workers writes", 0)
    rows = [
        ["tick: document reads", c1.get("tick reads", 0), f"{due} (the due documents, from two queries) + the ledger's",
         c2.get("tick reads", 0)],
        ["tick: document writes", c1.get("tick writes", 0), "0", c2.get("tick writes", 0)],
        ["workers: document reads", c1.get("workers reads", 0), "0 (each due document came in its message)",
         c2.get("workers reads", 0)],
        ["workers: document writes", c1.get("workers writes", 0), f"{due} (each due document's poll time moves)",
         c2.get("workers writes", 0)],
        ["messages to poll workers", first["messages"], f"{-(-due_shards // 20) + -(-due_jobs // 20)} (20 per message)",
         second["messages"]],
        ["provider `get_batch` calls", first["gets"], f"{due_shards}", second["gets"]],
        ["seconds (tick / workers)", f"{first['tick_seconds']:.2f} / {first['worker_seconds']:.2f}", "",
         f"{second['tick_seconds']:.2f} / {second['worker_seconds']:.2f}"],
    ]
    steps = ", ".join(f"{k} {v}" for k, v in sorted(first["worker"].items()) if v and k != "seconds")
    body = f"""
{total:,} RUNNING jobs in the Firestore emulator, one running shard each: {due_shards} shards due ({changed}
whose batch progressed since the last poll, {due_shards - changed} unchanged), {total - due_shards:,} not due;
{due_jobs} jobs due (heartbeat), {total - due_jobs:,} not.

{md_table(["per scheduler tick", f"tick 1 ({due} due)", "minimum", "tick 2 (none due)"], rows)}

Per due item (shard or job): **{reads / due:.2f} reads and {writes / due:.2f} writes**. Worker steps: {steps}.

Not-due documents cost nothing: the due queries return the due ones only. A due shard or job costs the
query's read of it and one conditional write (its next poll time always moves; a progressed shard carries
its new counts in the same write), with no transaction and no lease: the worker writes over the revision
the tick read, so a document written meanwhile is left to its writer. What the tick reads beyond the due
documents is fixed per tick, not per job: the ledger, its queue's head, and up to 20 of its holds older
than a lease checked against their shards (`reconcile_ledger`: here every running batch's hold is older
than a lease, so each tick reads 20 shards), and the reconciler's page of recent uploads (none here).
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[
            Target(f"poller reads each due item once ({due} due of {total:,} jobs)",
                   c1.get("workers reads", 0) == 0, f"{c1.get('workers reads', 0)} reads by the workers"),
            Target("poller writes only what changed (1 write per due item)", c1.get("workers writes", 0) <= due,
                   f"{c1.get('workers writes', 0)} writes for {due} due items"),
        ],
        plot={"reads": reads, "writes": writes, "due": due, "min_reads": due, "min_writes": due},
    )


def plot(ax: Any, p: dict[str, Any]) -> None:
    x = range(2)
    ax.bar([i - 0.2 for i in x], [p["reads"], p["writes"]], 0.4, label="measured")
    ax.bar([i + 0.2 for i in x], [p["min_reads"], p["min_writes"]], 0.4, label="minimum", color="grey")
    ax.set_xticks(list(x), ["document reads", "document writes"])
    ax.set_title(f"4. one tick and its workers, {p['due']} due items of 1,000 jobs")
    ax.legend(fontsize=8)
