"""8. Completion fan-out (issue 14): 100,000 texts x 768 dimensions in 4 shards, written by `complete` with
2 instances (FUNCTION_INSTANCES='{"complete": 2}') against the same job with 1 instance (the serial run).

Each run on a stack of its own, uploaded under INPUT_PREFIX and carried by the stack alone: shards cut at
MAX_REQUESTS_PER_BATCH = 25,000 rows (token limits set far above the input, and the emulator without a
token quota, so rows alone cut the shards), the emulator's hash encoder (the model is not what is
measured). The four batches run together at the emulator and end within seconds of each other; each end
reaches the pipeline by webhook, and each SUCCEEDED shard is one message to `complete`.

Timeline, one host clock: the batches' `createTime`/`endTime` (the emulator), each shard's move to WRITTEN
(its document's `updated_at`), the job's `completed_at`, and the event's arrival here. Completion wall
time = from the first batch's end to the job's `completed_at` (every shard written, then errors, manifest,
event); batch-end-to-event latency = from the last batch's end to the event received.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from benchmarks.common import (
    BenchRun,
    CpuSampler,
    EmulatorAdmin,
    EventWatcher,
    Section,
    Target,
    epoch,
    job_document,
    job_shards,
    md_table,
    passages,
    upload_file,
)
from infra.local.processes import wait_until

__all__ = ["NAME", "TITLE", "run"]

NAME = "fanout"
TITLE = "8. Completion fan-out: 100k x 768 in 4 shards, 2 complete instances against 1"
SHARDS = 4


def _overrides(instances: int, rows: int) -> dict[str, str]:
    return {
        "FUNCTION_INSTANCES": json.dumps({"complete": instances}),
        "MAX_REQUESTS_PER_BATCH": str(rows),
        "MAX_TOKENS_PER_BATCH": str(10**12),
        "ENQUEUED_TOKENS_LIMIT": str(10**12),
        "GEMINI_EMULATOR_ENCODER": "hash",
        "GEMINI_EMULATOR_QUOTAS": json.dumps({"concurrent_batches": 100, "file_storage_bytes": 20 * 1024**3,
                                              "file_bytes": 2 * 1024**3}),
    }


def _one(bench: BenchRun, instances: int, path: Any, n: int) -> dict[str, Any]:
    from shared.domain.jobs import job_id_for

    with bench.own_stack(f"fanout-{instances}", _overrides(instances, n // SHARDS)) as stack:
        emulator = EmulatorAdmin.of(stack)
        with EventWatcher(stack) as events, CpuSampler(stack.process_groups) as cpu:
            began = time.time()
            blob = upload_file(stack, path, f"{stack.env['INPUT_PREFIX']}bench/fanout-{n}.jsonl")
            job_id = job_id_for(blob.bucket.name, blob.name, str(blob.generation))
            event, received = events.wait_for(job_id, timeout=1800)
        wait_until(lambda: stack.relay_state()["in_flight"] == 0, 120, 0.2, "the last invocations to end")
        stats = stack.function_stats()["complete"]
        job = job_document(job_id)
        shards = job_shards(job_id)
        batches = [emulator.batch(s.batch_name)["metadata"] for s in shards if s.batch_name]
    if event["status"] != "SUCCEEDED" or event["counts"]["succeeded"] != n:
        raise RuntimeError(f"the fan-out run with {instances} instance(s) did not succeed: {event}")
    ends = sorted(epoch(b["endTime"]) for b in batches)
    written = sorted(epoch(s.updated_at) for s in shards)
    completed = epoch(job.completed_at)
    return {
        "instances": instances, "shards": len(shards), "total": received - began,
        "created": min(epoch(b["createTime"]) for b in batches) - began, "first_end": ends[0] - began,
        "last_end": ends[-1] - began, "written": [w - began for w in written], "completed": completed - began,
        "received": received - began, "completion": completed - ends[0], "latency": received - ends[-1],
        "invocations": stats["invocations"], "longest": stats["longest_invocation_s"],
        "cpu": cpu.between(ends[0], completed), "window": completed - ends[0],
    }


def run(bench: BenchRun) -> Section:
    n = 20_000 if bench.quick else 100_000
    path = bench.workdir / f"fanout-{n}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"p-{i}", "text": t}) + b"\n" for i, t in enumerate(passages(n, seed=808))))
    runs = [_one(bench, instances, path, n) for instances in (1, 2)]
    serial, parallel = runs
    rows = [[
        f"{r['instances']} instance{'s' if r['instances'] > 1 else ''}", r["shards"], f"{r['created']:.1f}",
        f"{r['first_end']:.1f} / {r['last_end']:.1f}", ", ".join(f"{w:.1f}" for w in r["written"]),
        f"{r['completed']:.1f}", f"**{r['completion']:.1f}**", f"**{r['latency']:.1f}**",
        f"{r['invocations']} / {r['longest']:.1f}", f"{r['total']:.1f}",
    ] for r in runs]
    speedup = serial["completion"] / parallel["completion"]
    parts = sorted({p for r in runs for p, v in r["cpu"].items() if v >= 0.5}, key=lambda p: -serial["cpu"].get(p, 0))
    cpu_rows = [[p, *[f"{r['cpu'].get(p, 0):.1f}" for r in runs]] for p in parts]
    cpu_rows.append(["**all parts** (window seconds x 2 cores available)",
                     *[f"**{sum(r['cpu'].values()):.1f}** ({2 * r['window']:.0f})" for r in runs]])
    body = f"""
{n:,} distinct passages (realistic sentences), 768 dimensions, one .jsonl; {SHARDS} shards of {n // SHARDS:,} rows.
Seconds from the upload's start:

{md_table(["complete", "shards", "first batch created", "batches ended, first / last", "shards WRITTEN",
           "job completed", "completion wall time", "batch end to event", "complete invocations / longest s",
           "upload to event"], rows)}

CPU seconds of each part of the stack during the completion window (first batch end -> job completed),
sampled every second from /proc by process group:

{md_table(["part", *[f"{r['instances']} instance(s)" for r in runs]], cpu_rows)}

Completion wall time with 2 instances: {parallel['completion']:.1f} s against {serial['completion']:.1f} s serial
({speedup:.2f}x). Each shard is written by its own invocation; with one instance they queue behind one
another, with two, two run at once on this machine's 2 cores, sharing them with fake-gcs-server (which
receives every output file) and the rest of the stack, so the speed-up is bounded by the cores, not by
the pipeline. The last shard's transaction makes the job COMPLETING, and that invocation writes
errors.jsonl, the manifest and the one event.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[Target(f"completion with 2 complete instances faster than serial ({n:,} x 768, {SHARDS} shards)",
                        parallel["completion"] < serial["completion"],
                        f"{parallel['completion']:.1f} s against {serial['completion']:.1f} s ({speedup:.2f}x)")],
        plot={"runs": [{k: r[k] for k in ("instances", "first_end", "last_end", "written", "completed", "received")}
                       for r in runs]},
    )


def plot(ax: Any, data: dict[str, Any]) -> None:
    for y, r in enumerate(data["runs"]):
        ax.barh(y, r["last_end"] - r["first_end"], left=r["first_end"], color="tab:grey", label="batches end" if not y else None)
        ax.barh(y, r["completed"] - r["last_end"], left=r["last_end"], color="tab:blue", label="writing" if not y else None)
        ax.plot(r["written"], [y] * len(r["written"]), "k|", markersize=14, label="shard written" if not y else None)
        ax.plot([r["received"]], [y], "r*", label="event" if not y else None)
    ax.set_yticks(range(len(data["runs"])), [f"{r['instances']} instance(s)" for r in data["runs"]])
    ax.set_xlabel("seconds since the upload")
    ax.set_title("8. complete fan-out, 100k x 768 in 4 shards")
    ax.legend(fontsize=7)
