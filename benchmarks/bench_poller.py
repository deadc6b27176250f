"""4. Poller: Firestore document reads and writes, and seconds, per run with 1,000 active jobs.

1,000 RUNNING jobs (one FILE shard each, a batch name, 1,000 requests) are seeded in the Firestore
emulator: 100 due (`next_poll_at` in the past), 900 not due. Of the due ones, half have a batch that moved
since the last poll (the provider reports more items done), half one that did not. `poll_due_jobs` runs in
this process with the stack's ticker paused (so the stack's own poller stays out), over:

- the real `FirestoreJobRepository`, subclassed to count document reads and writes as Firestore bills
  them: a query reads each document it returns (at least one read); each transaction attempt of
  `update` reads the document once and writes it only when the change altered it; `get` reads one;
  `replace_if_unchanged` (a write with an update-time precondition) writes one and reads none;
- a provider fake of our port (`ScriptedProvider`) that answers `get_batch` at once from a script. Not the
  Gemini emulator, because the mix needs batches that have and have not progressed between two polls, which
  the emulator cannot hold for a chosen half of 100 batches, and because provider latency is not what is
  measured here: the figure is Firestore work per run.

A second run right after the first finds nothing due: the idle cost of a tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from benchmarks.common import BenchRun, Section, Target, UnusedProvider, md_table, wipe_firestore
from shared.adapters.firestore_jobs import FirestoreJobRepository, _to_document
from shared.domain.jobs import Job
from shared.ports import ProviderBatch, ProviderState

__all__ = ["NAME", "TITLE", "CountingJobRepository", "ScriptedProvider", "run"]

NAME = "poller"
TITLE = "4. Poller: Firestore reads and writes per run with 1,000 active jobs"
T = TypeVar("T")
REQUESTS = 1000


class CountingJobRepository(FirestoreJobRepository):
    """Counts document reads and writes (Firestore's billing units) of every call."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reads = self.writes = self.transactions = self.query_reads = 0

    def create(self, job: Job) -> tuple[Job, bool]:
        stored, created = super().create(job)
        self.writes += created
        return stored, created

    def get(self, job_id: str) -> Job | None:
        self.reads += 1
        return super().get(job_id)

    def due(self, now: datetime, limit: int) -> list[Job]:
        jobs = super().due(now, limit)
        self.query_reads += max(len(jobs), 1)  # a query that returns nothing is billed one read
        self.reads += max(len(jobs), 1)
        return jobs

    def replace_if_unchanged(self, job: Job) -> bool:
        written = super().replace_if_unchanged(job)
        self.writes += written
        return written

    def update(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T]:
        changed = [False]

        def counted(job: Job) -> T:
            self.reads += 1  # the transaction read the document before calling us
            before = _to_document(job)
            result = change(job)
            changed[0] = _to_document(job) != before
            return result

        outcome = super().update(job_id, counted)
        self.transactions += 1
        self.writes += changed[0]  # the attempt that committed
        return outcome


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



def _seed(client: Any, collection: str, total: int, due: int, bucket: str) -> None:
    """`total` RUNNING jobs, the first `due` of them due; written in batches of 500 (setup, not counted)."""
    from shared.config import Settings
    from shared.domain.jobs import Counts, JobState, Shard, ShardMode, ShardState, SourceObject

    now = datetime.now(UTC)
    options = Settings().default_options()
    writer = client.batch()
    for i in range(total):
        source = SourceObject(bucket=bucket, name=f"manual/bench/poller-{i:04d}.jsonl", generation="1", size=10**6)
        staging = f"gs://embeddings-output/embeddings/_staging/poller-{i:04d}/1/"
        job = Job(
            job_id=f"job-bench-poller-{i:04d}", source=source, options=options, state=JobState.RUNNING,
            created_at=now - timedelta(minutes=10), updated_at=now - timedelta(minutes=1),
            submitted_at=now - timedelta(minutes=10), deadline_at=now + timedelta(hours=72),
            next_poll_at=now - timedelta(seconds=30 + i) if i < due else now + timedelta(seconds=60 + i),
            staged=True, counts=Counts(total=REQUESTS),
            shards=[Shard(index=0, mode=ShardMode.FILE, request_count=REQUESTS, request_bytes=REQUESTS * 300,
                          requests_uri=staging + "requests-00000.jsonl", records_uri=staging + "records-00000.jsonl",
                          state=ShardState.RUNNING, batch_attempts=1, batch_name=f"batches/bench-{i:04d}",
                          input_file=f"files/bench-{i:04d}", pending=REQUESTS)],
        )
        job.refresh_counts()
        writer.set(client.collection(collection).document(job.job_id), _to_document(job))
        if (i + 1) % 500 == 0:
            writer.commit()
            writer = client.batch()
    writer.commit()


def _one_run(ctx: Any, jobs: CountingJobRepository, provider: ScriptedProvider) -> dict[str, Any]:
    from shared.services.poll import poll_due_jobs

    reads, writes, transactions, gets, query = jobs.reads, jobs.writes, jobs.transactions, provider.gets, jobs.query_reads
    started = time.perf_counter()
    summary = poll_due_jobs(ctx)
    return {"seconds": time.perf_counter() - started, "due": summary.due, "polled": summary.polled,
            "errors": summary.errors, "reads": jobs.reads - reads, "writes": jobs.writes - writes,
            "transactions": jobs.transactions - transactions, "gets": provider.gets - gets,
            "query_reads": jobs.query_reads - query}


def run(bench: BenchRun) -> Section:
    from google.cloud import firestore

    from shared.bootstrap import build_context
    from shared.config import Settings

    total, due = (200, 20) if bench.quick else (1000, 100)
    stack = bench.stack
    collection = stack.env["JOBS_COLLECTION"]
    stack.reset()
    moved = {f"batches/bench-{i:04d}" for i in range(0, due, 2)}  # every other due job's batch progressed
    provider = ScriptedProvider(lambda name: REQUESTS // 2 if name in moved else 0)
    client = firestore.Client()
    jobs = CountingJobRepository(client, collection)
    ctx = replace(build_context(Settings(input_prefix="manual/")), jobs=jobs, provider=provider)
    with stack.ticker_paused():
        try:
            _seed(client, collection, total, due, stack.env["INPUT_BUCKET"])
            first = _one_run(ctx, jobs, provider)
            second = _one_run(ctx, jobs, provider)
        finally:
            wipe_firestore(stack)  # before the ticker resumes: the stack's poller must not meet these jobs
    if first["due"] != due or first["polled"] != due or first["errors"]:
        raise RuntimeError(f"unexpected poll run: {first}")

    changed = len(moved)
    rows = [
        ["document reads", first["reads"], f"{due} (each due job once, from the query)",
         f"{first['reads'] / due:.1f}", second["reads"], "1 (an empty query is billed one read)"],
        ["document writes", first["writes"], f"{due} (one per due job: its `next_poll_at` must move)",
         f"{first['writes'] / due:.1f}", second["writes"], "0"],
        ["transactions (`update` calls)", first["transactions"], "", f"{first['transactions'] / due:.1f}",
         second["transactions"], ""],
        ["provider `get_batch` calls", first["gets"], f"{due}", f"{first['gets'] / due:.1f}", second["gets"], "0"],
        ["seconds", f"{first['seconds']:.2f}", "", f"{first['seconds'] / due * 1000:.0f} ms",
         f"{second['seconds']:.3f}", ""],
    ]
    body = f"""
{total:,} RUNNING jobs in the Firestore emulator: {due} due ({changed} whose batch progressed since the last
poll, {due - changed} unchanged), {total - due:,} not due. One `poll_due_jobs` run, then a second one at once.

{md_table(["per run", f"run 1 ({due} due)", "minimum", "per due job", "run 2 (none due)", "minimum"], rows)}

Not-due jobs cost nothing: the due query returned {first['query_reads']} documents, the due ones.
Per due RUNNING job, changed or not: {first['reads'] / due:.1f} reads and {first['writes'] / due:.1f} writes,
in {first['transactions'] / due:.1f} transactions. The minimum is 1 read (the query already returned the
document) and 1 write (`next_poll_at` always moves, so even an unchanged job needs one; a changed one carries
its new counts in the same write).

How the poller gets there: a poll that only refreshes a RUNNING job's batches takes no lease. It uses the
document the query returned, asks the provider, and writes the job once with the document's update time as
a precondition, so a job leased or written by anyone since the query is left to that worker (the write
fails, nothing is lost). The lease, a transaction of its own, is taken only for the steps that must not run
twice: creating or retrying a batch, cancelling, stopping at the deadline.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[
            Target(f"poller reads only due jobs ({due} of {total:,})", first["query_reads"] <= due and second["reads"] <= 1,
                   f"query returned {first['query_reads']}; 0 reads of not-due jobs"),
            Target("poller writes only what changed (minimum 1 write per due job)", first["writes"] <= due,
                   f"{first['writes']} writes ({first['writes'] / due:.0f} per due job)"),
            Target("poller reads each due job once", first["reads"] <= due,
                   f"{first['reads']} reads ({first['reads'] / due:.0f} per due job)"),
        ],
        plot={"reads": first["reads"], "writes": first["writes"], "due": due, "seconds": first["seconds"],
              "min_reads": due, "min_writes": due},
    )
