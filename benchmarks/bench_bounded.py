"""7. Bounded invocations (issue 14): with every function's timeout at 60 s (FUNCTION_TIMEOUTS, after which
the relay kills the invocation, as Cloud Functions does, and the message is redelivered), a 1 GB JSONL and
a gzip that expands to 1 GB both complete, uploaded under INPUT_PREFIX and carried by the stack alone.

Stack settings (a stack of its own): FUNCTION_TIMEOUTS 60 s for every function, and what a deployment
with that timeout sets with it: STAGE_BUDGET_SECONDS 20 (an invocation stops staging at the first shard
boundary after 20 s, leaving room for one more shard and the resume), MAX_REQUESTS_PER_BATCH 20,000 (the
rows of a shard, which one staging invocation reads), COMPLETE_MAX_ROWS 5,000 (the rows one `complete`
invocation writes: the default 50,000 per 540 s, scaled to 60 s; a 20,000-row batch is written by a chain
of 4 invocations), LEASE_SECONDS 60
(a lease as long as an invocation), GEMINI_TIMEOUT_SECONDS 20 (a create needs its HTTP timeout + 30 s of
lease left), POLL_TIME_BUDGET_SECONDS 30. Capacity is not the subject here: ENQUEUED_TOKENS_LIMIT and
MAX_TOKENS_PER_BATCH far above the input (rows cut the shards), and the emulator without a token quota
(its batch and file limits stay Tier 1's); the emulator's hash encoder (`GEMINI_EMULATOR_ENCODER=hash`: the
model is not what is measured).

Inputs: records of 3,000-6,000 characters of realistic sentences, no title, small metadata, 768
dimensions (the default). The gzip is the same JSONL compressed (level 1).

Measured, per input: the relay's counters per function (`stack.function_stats()`: invocations, the
longest invocation, timeouts), zeroed before the upload; the job's staging invocations and, from a
Firestore listener on the job, where each one started (`staging.next_key`: records already staged), so the
input bytes read again to resume (none for the plain JSONL, opened with a ranged read at the saved position;
for the gzip, the decompressed bytes before that position, which are inflated again but not parsed);
restaged bytes: every records file (`records-NNNNNN.jsonl`, one per input shard segment) is
listed once a second while the job runs, and any second generation of one name is a records file written
twice for the same shard: its size counts as restaged (a rewrite within one second of the first would be
missed; a rewrite needs a killed invocation and a redelivery, seconds apart). That happens when a staging
invocation is killed after its records file is durable and before the transaction that records its shard;
one killed while the file is still uploading leaves no object (its work is lost, not counted as bytes):
the relay's timeouts of `submit` and `stage` count those.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    BenchRun,
    EventWatcher,
    JobWatcher,
    Sampler,
    Section,
    Target,
    epoch,
    job_document,
    job_shards,
    md_table,
    upload_file,
    write_jsonl_input,
)
from infra.local.processes import wait_until

__all__ = ["NAME", "TITLE", "run"]

NAME = "bounded"
TITLE = "7. Bounded invocations: 1 GB JSONL and 1 GB (expanded) gzip with 60 s function timeouts"
TIMEOUT = 60
FUNCTIONS = ("submit", "stage", "poller", "poll_worker", "complete", "webhook", "status")
OVERRIDES = {
    "FUNCTION_TIMEOUTS": json.dumps(dict.fromkeys(FUNCTIONS, TIMEOUT)),
    "STAGE_BUDGET_SECONDS": "20",
    "MAX_REQUESTS_PER_BATCH": "20000",
    "COMPLETE_MAX_ROWS": "5000",
    "LEASE_SECONDS": str(TIMEOUT),
    "GEMINI_TIMEOUT_SECONDS": "20",
    "POLL_TIME_BUDGET_SECONDS": "30",
    "ENQUEUED_TOKENS_LIMIT": str(10**12),
    "MAX_TOKENS_PER_BATCH": str(10**12),
    "GEMINI_EMULATOR_ENCODER": "hash",
    "GEMINI_EMULATOR_QUOTAS": json.dumps({"concurrent_batches": 100, "file_storage_bytes": 20 * 1024**3,
                                          "file_bytes": 2 * 1024**3}),
}


def _offsets(path: Path) -> list[int]:
    """The byte offset where each record (line) ends, in the uncompressed file."""
    ends, position = [], 0
    with path.open("rb", buffering=1 << 20) as lines:
        for line in lines:
            position += len(line)
            ends.append(position)
    return ends


def _records_listing(stack: Any) -> Any:
    """A probe: every records file under the staging prefix, as (name, generation, size)."""
    client = stack.storage_client()
    bucket = client.bucket(stack.env["OUTPUT_BUCKET"])
    prefix = f"{stack.env['OUTPUT_PREFIX'].strip('/')}/_staging/"

    def listing() -> list[tuple[str, int, int]]:
        return [(b.name, b.generation, b.size) for b in client.list_blobs(bucket, prefix=prefix)
                if "/records-" in b.name]

    return listing


def _one(bench: BenchRun, stack: Any, path: Path, name: str, content_type: str, offsets: list[int],
         expanded: int) -> dict[str, Any]:
    from shared.domain.jobs import job_id_for

    stack.reset()
    stack.reset_function_stats()
    env = stack.env
    with EventWatcher(stack) as events, Sampler(_records_listing(stack), 1.0) as listing:
        began = time.time()
        blob = upload_file(stack, path, f"{env['INPUT_PREFIX']}bench/{name}", content_type)
        uploaded = time.time()
        job_id = job_id_for(blob.bucket.name, blob.name, str(blob.generation))
        watcher = JobWatcher(job_id, env["JOBS_COLLECTION"])
        try:
            event, received = events.wait_for(job_id, timeout=3000)
        finally:
            watcher.close()
    wait_until(lambda: stack.relay_state()["in_flight"] == 0, 120, 0.2, "the last invocations to end")
    stats = stack.function_stats()
    job = job_document(job_id)
    continuations = sum(1 for shard in job_shards(job_id) if shard.continues is not None)
    first_seen: dict[int, int] = {}  # staging invocation -> records staged when it started
    for _, doc in watcher.versions:
        staging = doc.get("staging") or {}
        if staging.get("invocations"):
            first_seen.setdefault(staging["invocations"], staging["next_key"])
    starts = sorted(first_seen.items())
    inflated = name.endswith(".gz")
    reread = sum(offsets[key - 1] if key else 0 for _, key in starts) if inflated else 0
    generations: dict[str, dict[int, int]] = {}
    for _, seen in listing.samples:
        for object_name, generation, size in seen:
            generations.setdefault(object_name, {})[generation] = size
    # every generation of a records file after its first is a second write of that shard's records
    restaged = sum(size for gens in generations.values() for _, size in sorted(gens.items())[1:])
    twice = sum(1 for gens in generations.values() if len(gens) > 1)
    staged_at = watcher.first_time("RUNNING")
    return {
        "name": name, "bytes": path.stat().st_size, "expanded": expanded, "records": len(offsets),
        "status": event["status"], "succeeded": event["counts"]["succeeded"], "total": event["counts"]["total"],
        "seconds": received - began, "upload": uploaded - began,
        "staged": (staged_at - began) if staged_at else None,
        "completed": epoch(job.completed_at) - began if job.completed_at else None,
        "invocations": job.staging.invocations, "starts": starts, "reread": reread,
        "records_files": len(generations), "rewritten": twice, "restaged": restaged,
        "shards": job.shard_count - continuations, "continuations": continuations,
        "functions": {fn: {k: stats[fn][k] for k in ("invocations", "longest_invocation_s", "timeouts", "crashes")}
                      for fn in FUNCTIONS if fn in stats},
    }


def run(bench: BenchRun) -> Section:
    size = 100 * MB if bench.quick else 1000 * MB
    plain = bench.workdir / f"bounded-{size // MB}MB.jsonl"
    began = time.perf_counter()
    write_jsonl_input(plain, size, seed=11, chars=(3000, 6000), titles=False)
    offsets = _offsets(plain)
    packed = bench.workdir / f"bounded-{size // MB}MB.jsonl.gz"
    with plain.open("rb") as source, gzip.open(packed, "wb", compresslevel=1) as target:
        shutil.copyfileobj(source, target, 1 << 20)
    expanded = plain.stat().st_size
    print(f"  inputs generated in {time.perf_counter() - began:.0f} s: {expanded / MB:,.0f} MB JSONL "
          f"({len(offsets):,} records), gzip {packed.stat().st_size / MB:,.0f} MB", flush=True)
    results = []
    with bench.own_stack("bounded", OVERRIDES) as stack:
        for path, content_type in ((plain, "application/jsonl"), (packed, "application/gzip")):
            results.append(_one(bench, stack, path, path.name, content_type, offsets, expanded))
            r = results[-1]
            longest = ", ".join(f"{k} {v['longest_invocation_s']:.0f} s" for k, v in r["functions"].items())
            print(f"  {r['name']}: {r['status']} in {r['seconds']:.0f} s, {r['invocations']} staging invocations, "
                  f"longest {longest}", flush=True)
            path.unlink()
        stack.reset()
    return _section(bench, results)


def _section(bench: BenchRun, results: list[dict[str, Any]]) -> Section:
    rows, longest, targets = [], [], []
    for r in results:
        rows.append([
            r["name"], f"{r['bytes'] / MB:,.0f} MB ({r['expanded'] / MB:,.0f} MB expanded)", f"{r['records']:,}",
            f"{r['shards']} (+{r['continuations']})", f"{r['status']} {r['succeeded']:,}/{r['total']:,}", f"{r['seconds']:.0f}",
            f"{r['staged']:.0f}" if r["staged"] is not None else "?", r["invocations"],
            ", ".join(f"{key:,}" for _, key in r["starts"]), f"{r['reread'] / MB:,.0f} MB",
            f"{r['records_files']} / {r['rewritten']}", f"{r['restaged']:,}",
        ])
        longest.append([r["name"], *[f"{r['functions'][fn]['longest_invocation_s']:.1f} s "
                                     f"({r['functions'][fn]['invocations']} calls, {r['functions'][fn]['timeouts']} timed out)"
                                     if fn in r["functions"] else "-" for fn in FUNCTIONS[:5]]])
        worst = max(v["longest_invocation_s"] for v in r["functions"].values())
        timeouts = sum(v["timeouts"] for v in r["functions"].values())
        targets += [
            Target(f"{r['name']}: completes with {TIMEOUT} s timeouts", r["status"] == "SUCCEEDED" and r["succeeded"] == r["records"],
                   f"{r['status']} {r['succeeded']:,}/{r['records']:,} in {r['seconds']:.0f} s"),
            Target(f"{r['name']}: every invocation under {TIMEOUT} s", worst < TIMEOUT and timeouts == 0,
                   f"longest {worst:.1f} s, {timeouts} timed out"),
            Target(f"{r['name']}: restaged bytes = 0", r["restaged"] == 0, f"{r['restaged']:,} bytes"),
        ]
    body = f"""
{md_table(["input", "size", "records", "shards (+ continuations)", "event", "upload to event s", "upload to staged s",
           "staging invocations", "records already staged at each one's start", "input re-read to resume",
           "records files / written twice", "restaged bytes"], rows)}

Longest invocation of each function (the relay's measure, its counters zeroed before each upload):

{md_table(["input", *FUNCTIONS[:5]], longest)}

Staging is bounded: each invocation stops at the first shard boundary after STAGE_BUDGET_SECONDS and hands
the rest on (a message to `stage`), and a shard, once its transaction commits, is never staged again. The
next invocation opens a plain input with a ranged read at the saved position, so its work does not grow
with the input. A gzip cannot be entered in the middle: it is inflated from its start up to the position,
unparsed (the `input re-read` column), which grows with k but at inflate speed, far faster than parsing.

Completion is bounded the same way: one `complete` invocation writes at most COMPLETE_MAX_ROWS items of a
shard, and a continuation shard of the same batch (its own message, its own invocation) writes the rest,
so a batch of any size is written in invocations of a fixed size.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body, targets=targets,
        plot={"inputs": [{"name": r["name"], "longest": {fn: v["longest_invocation_s"] for fn, v in r["functions"].items()}}
                         for r in results], "timeout": TIMEOUT},
    )


def plot(ax: Any, data: dict[str, Any]) -> None:
    functions = list(FUNCTIONS[:5])
    width = 0.8 / len(data["inputs"])
    for k, entry in enumerate(data["inputs"]):
        ax.bar([i + k * width for i in range(len(functions))], [entry["longest"].get(fn, 0) for fn in functions],
               width, label=entry["name"])
    ax.axhline(data["timeout"], color="red", linestyle="--", label="timeout")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(functions))], functions)
    ax.set_ylabel("longest invocation, s")
    ax.set_title("7. 1 GB inputs with 60 s function timeouts")
    ax.legend(fontsize=7)

