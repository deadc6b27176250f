"""5. Gemini API calls per job, counted by the emulator (`GET /_emulator/stats`), against the minimum the
Batch API allows: per batch one Files API upload, one create, at least one get, one download (and, for
the files' hygiene, two file deletes: the input when the batch ends, the results once written).

Three jobs through the running stack, one at a time, the emulator reset (stats included) before each:
- one shard: a .jsonl uploaded under INPUT_PREFIX, carried by the stack alone;
- several shards: submitted in this process with `MAX_REQUESTS_PER_BATCH` small (the stack's submit function
  has the default), the input under `manual/` so the running submit function ignores it; the stack's
  functions carry the job on;
- one shard whose items fail once: the fault `item_failure_rate` 0.1 with `item_failure_attempts` 1, so
  about 10% of the items fail on the first try and `complete` resubmits them as a follow-up batch.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks.common import BenchRun, EventWatcher, Section, Target, job_shards, md_table, passages
from infra.local.processes import wait_until

__all__ = ["NAME", "TITLE", "run"]

NAME = "calls"
TITLE = "5. Provider calls per job against the minimum"
COLUMNS = ("uploads", "upload_chunks", "creates", "gets", "downloads", "lists", "file_gets", "file_deletes", "cancels",
           "deletes")
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
        if per_shard:
            ctx = build_context(Settings(input_prefix="manual/", max_requests_per_batch=per_shard))
            submit_object(ctx, SourceObject(bucket=blob.bucket.name, name=blob.name, generation=str(blob.generation),
                                            size=blob.size, content_type=blob.content_type))
        event, _ = events.wait_for(job_id, timeout=900)
    seconds = time.monotonic() - started
    wait_until(lambda: stack.relay_state()["in_flight"] == 0, 120, 0.2, "the last invocations to end")
    stats = emulator.stats()
    emulator.clear_faults()
    shards = job_shards(job_id)
    batches = sum(s.batch_attempts for s in shards if s.batch_name)
    return {"label": label, "texts": len(texts), "status": event["status"], "counts": event["counts"],
            "shards": len(shards), "batches": batches, "calls": stats["calls"], "seconds": seconds,
            "webhooks": stats.get("webhookDeliveries", {}).get("delivered", 0)}


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
            f"{job['status']} {job['counts']['succeeded']}/{job['counts']['total']}", job["webhooks"],
            f"{job['seconds']:.0f}",
        ])
        over = {k: v for k, v in extra.items() if k != "gets" and v}
        targets.append(Target(f"{job['label']}: one upload, create and download per batch, no lists",
                              not over and extra["gets"] >= 0,
                              ", ".join(f"{k} {calls.get(k, 0)} (min {minimum[k]})" for k in minimum)))
    body = f"""
Calls per job as the emulator counted them (`GET /_emulator/stats`), the emulator reset before each job.
Minimum per batch: 1 upload (a resumable session: one start plus its chunks), 1 create, >= 1 get,
1 download, 0 lists; the retried job has two batches (its shard, then the follow-up of the failed items).

{md_table(["job", "shards", "batches", *COLUMNS, "over the minimum", "event", "webhooks", "seconds"], rows)}

Gets: each poll of a running shard gets its batch (polls come at the shard's own interval, or at once when
a signed webhook announces the batch's end); `complete` gets each batch once more before downloading its
results (`GeminiClient.iter_results(name)` looks the batch up to find its responses file), and once more
to find the responses file to delete. `upload_chunks` counts the resumable protocol's chunk requests
(8 MiB each), `file_gets` Files API lookups, `file_deletes` the inputs deleted when their batch ends and
the responses files deleted once written.
"""
    return Section(name=NAME, title=TITLE, command=bench.command(NAME), body=body, targets=targets,
                   plot={"jobs": [{"label": j["label"], "calls": j["calls"], "batches": j["batches"]} for j in jobs]})


def plot(ax: Any, p: dict[str, Any]) -> None:
    kinds = ["uploads", "creates", "gets", "downloads", "file_deletes"]
    width = 0.8 / len(p["jobs"])
    for j, job in enumerate(p["jobs"]):
        ax.bar([i + j * width for i in range(len(kinds))], [job["calls"].get(k, 0) / job["batches"] for k in kinds],
               width, label=job["label"])
    ax.axhline(1, color="red", linestyle="--", label="minimum (1 per batch)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds)
    ax.set_ylabel("calls per batch")
    ax.set_title("5. Gemini API calls per batch")
    ax.legend(fontsize=8)
