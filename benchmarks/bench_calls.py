"""5. Gemini API calls per job, counted by the emulator (`GET /_emulator/stats`), against the minimum the
Batch API allows: per batch one Files API upload, one create, at least one get, one download.

Three jobs through the running stack, one at a time, the emulator reset (stats included) before each:
- one shard: a .jsonl uploaded under INPUT_PREFIX, carried by the stack alone;
- several shards: submitted in this process with `MAX_REQUESTS_PER_BATCH` small (the stack's submit function
  has the default), the input under `manual/` so the running submit function ignores it; the stack's
  poller and complete functions carry the job on;
- one shard whose items fail once: the fault `item_failure_rate` 0.1 with `item_failure_attempts` 1, so
  about 10% of the items fail on the first try and `complete` resubmits them as a follow-up batch.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks.common import BenchRun, EventWatcher, JobWatcher, Section, Target, md_table, passages

__all__ = ["NAME", "TITLE", "run"]

NAME = "calls"
TITLE = "5. Provider calls per job against the minimum"
COLUMNS = ("uploads", "upload_chunks", "creates", "gets", "downloads", "lists", "file_gets", "cancels", "deletes")
RETRY_FAULTS = {"item_failure_rate": 0.1, "item_failure_attempts": 1}


def _jsonl(texts: list[str], prefix: str) -> bytes:
    return b"".join(orjson.dumps({"id": f"{prefix}-{i}", "text": t}) + b"\n" for i, t in enumerate(texts))


def _job(bench: BenchRun, label: str, texts: list[str], *, per_shard: int | None = None,
         faults: dict[str, Any] | None = None) -> dict[str, Any]:
    from shared.bootstrap import build_context
    from shared.config import Settings
    from shared.domain.jobs import SourceObject, job_id_for
    from shared.services.submit import submit_object

    stack, emulator = bench.stack, bench.emulator
    stack.reset()
    if faults:
        emulator.set_faults(faults)
    path = bench.workdir / f"calls-{label}.jsonl"
    path.write_bytes(_jsonl(texts, label))
    prefix = "manual/" if per_shard else stack.env["INPUT_PREFIX"]
    client = stack.storage_client()
    blob = client.bucket(stack.env["INPUT_BUCKET"]).blob(f"{prefix}bench/calls-{label}.jsonl")
    with EventWatcher(stack) as events:
        started = time.monotonic()
        blob.upload_from_filename(str(path), content_type="application/jsonl")
        blob.reload()
        job_id = job_id_for(blob.bucket.name, blob.name, str(blob.generation))
        watcher = JobWatcher(job_id, stack.env["JOBS_COLLECTION"])
        try:
            if per_shard:
                ctx = build_context(Settings(input_prefix="manual/", max_requests_per_batch=per_shard))
                submit_object(ctx, SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation),
                                                size=blob.size, content_type=blob.content_type))
            event, _ = events.wait_for(job_id, timeout=900)
        finally:
            watcher.close()
    seconds = time.monotonic() - started
    stats = emulator.stats()
    emulator.clear_faults()
    from google.cloud import firestore

    job = firestore.Client().collection(stack.env["JOBS_COLLECTION"]).document(job_id).get().to_dict()
    batches = sum(s["batch_attempts"] for s in job["shards"])
    return {"label": label, "texts": len(texts), "status": event["status"], "counts": event["counts"],
            "shards": len(job["shards"]), "batches": batches, "calls": stats["calls"], "seconds": seconds,
            "polls": len(watcher.poll_times())}


def run(bench: BenchRun) -> Section:
    n = 100 if bench.quick else 300
    texts = passages(3 * n, seed=555)
    jobs = [
        _job(bench, "one-shard", texts[:n]),
        _job(bench, "three-shards", texts[: 3 * n], per_shard=n),
        _job(bench, "retried-items", texts[:n], faults=RETRY_FAULTS),
    ]
    rows, targets = [], []
    for job in jobs:
        calls = job["calls"]
        b = job["batches"]
        minimum = {"uploads": b, "creates": b, "gets": b, "downloads": b, "lists": 0}
        extra = {k: calls.get(k, 0) - v for k, v in minimum.items()}
        rows.append([
            f"{job['label']} ({job['texts']} texts)", job["shards"], b,
            *[calls.get(k, 0) for k in COLUMNS],
            " ".join(f"{k} {v:+d}" for k, v in extra.items() if v) or "none",
            f"{job['status']} {job['counts']['succeeded']}/{job['counts']['total']}", f"{job['seconds']:.0f}",
        ])
        over = {k: v for k, v in extra.items() if k != "gets" and v}
        targets.append(Target(f"{job['label']}: one upload, create and download per batch, no lists",
                              not over and extra["gets"] >= 0,
                              ", ".join(f"{k} {calls.get(k, 0)} (min {minimum[k]})" for k in minimum)))
    body = f"""
Calls per job as the emulator counted them (`GET /_emulator/stats`), the emulator reset before each job.
Minimum per batch: 1 upload (a resumable session: one start plus its chunks), 1 create, >= 1 get,
1 download, 0 lists; the retried job has two batches (its shard, then the follow-up of the failed items).

{md_table(["job", "shards", "batches", *COLUMNS, "over the minimum", "event", "seconds"], rows)}

Gets: each poll of a RUNNING job gets every batch still in flight, and `complete` gets each batch once more
before downloading its results (`GeminiClient.iter_results(name)` looks the batch up to find its responses
file); so gets = polls x batches in flight + 1 per batch. `upload_chunks` counts the resumable protocol's
chunk requests (8 MiB each), `file_gets` Files API lookups.
"""
    return Section(name=NAME, title=TITLE, command=bench.command(NAME), body=body, targets=targets,
                   plot={"jobs": [{"label": j["label"], "calls": j["calls"], "batches": j["batches"]} for j in jobs]})
