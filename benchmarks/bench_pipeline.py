"""1. End to end: one uploaded .jsonl of distinct realistic passages, from the upload to its completion
event on EVENTS_TOPIC, through the whole local stack (fake-gcs-server, relay, submit, ticker + poller,
the Gemini emulator, complete, Pub/Sub), against the emulator's bare encoder embedding the same texts in
this process (`bench_emulator.bare_encoder`: 2 threads, every text sorted by word pieces, batches of 32),
half of the texts just before the pipeline run and half just after, so that a neighbour's load coming or
going during the run weighs on both sides alike.

The timeline comes from the systems themselves (one host clock): the upload's start and end here, the job
document's `created_at` (submit claimed it), the batch's `createTime` and `endTime` (the emulator), the
first version of the job seen COMPLETING (a Firestore listener here), the job's `completed_at` (complete
ended it) and the event's arrival here. So the overhead splits into the emulator's own (its batch time
over the bare encoder's), polling latency (batch ended -> the poller noticed) and the pipeline's work.
CPU seconds of every stack process over the run are compared with the bare encoder's CPU seconds too:
CPU time barely depends on what else the machine runs.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import orjson

from benchmarks.common import (
    BenchRun,
    CpuSampler,
    EventWatcher,
    JobWatcher,
    Section,
    Target,
    md_table,
    passages,
    upload_file,
)

__all__ = ["NAME", "TITLE", "run"]

NAME = "pipeline"
TITLE = "1. End-to-end throughput: the local stack against the bare embedding model"
TARGET_OVERHEAD = 10.0  # percent
THREADS = 2  # the emulator's onnxruntime runs one thread per core on this 2-core machine; the same here


def _epoch(value: Any) -> float:
    """Firestore timestamps and RFC 3339 strings (the emulator's) as epoch seconds."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.timestamp()


def _pipeline_run(bench: BenchRun, texts: list[str]) -> dict[str, Any]:
    stack = bench.stack
    env = stack.env
    path = bench.workdir / "pipeline.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"p-{i}", "text": t}) + b"\n" for i, t in enumerate(texts)))
    name = f"{env['INPUT_PREFIX']}bench/pipeline-{len(texts)}.jsonl"
    from google.cloud import firestore

    from shared.domain.jobs import job_id_for

    with EventWatcher(stack) as events, CpuSampler({n: p.pid for n, p in stack.parts.items()}) as cpu:
        t0 = time.time()
        blob = upload_file(stack, path, name)
        uploaded = time.time()
        job_id = job_id_for(blob.bucket.name, blob.name, str(blob.generation))
        watcher = JobWatcher(job_id, env["JOBS_COLLECTION"])
        try:
            event, received = events.wait_for(job_id, timeout=3600)
        finally:
            watcher.close()
    job = firestore.Client().collection(env["JOBS_COLLECTION"]).document(job_id).get().to_dict()
    shards = job["shards"]
    batches = [bench.emulator.batch(s["batch_name"])["metadata"] for s in shards]
    stats = bench.emulator.stats()
    created, ended = min(_epoch(b["createTime"]) for b in batches), max(_epoch(b["endTime"]) for b in batches)
    completing = watcher.first_time("COMPLETING")
    if event["status"] != "SUCCEEDED" or event["counts"]["succeeded"] != len(texts) or completing is None:
        raise RuntimeError(f"the pipeline run did not succeed as expected: {event}")
    marks = {
        "upload": (t0, uploaded),
        "notify + claim": (uploaded, _epoch(job["created_at"])),
        "submit (stage, Files upload, create)": (_epoch(job["created_at"]), created),
        "emulator batch (createTime -> endTime)": (created, ended),
        "polling latency (batch end -> COMPLETING)": (ended, completing),
        "complete (hand-over, fetch, write)": (completing, _epoch(job["completed_at"])),
        "event (cleanup, publish, delivery)": (_epoch(job["completed_at"]), received),
    }
    return {
        "total": received - t0,
        "segments": {k: b - a for k, (a, b) in marks.items()},
        "polls": [t - created for t in watcher.poll_times()],
        "batch_seconds": ended - created,
        "cpu_run": cpu.between(t0, received),
        "cpu_batch": cpu.between(created, ended),
        "shards": len(shards),
        "encoded": stats["encodedTexts"],
        "cache_hits": stats["cacheHits"],
        "input_mb": path.stat().st_size / 1e6,
    }


def _cpu_rows(pipe: dict[str, Any], bare_cpu: float) -> list[list[str]]:
    run_cpu, batch_cpu = pipe["cpu_run"], pipe["cpu_batch"]
    others = sorted((n for n in run_cpu if n != "gemini"), key=lambda n: -run_cpu[n])
    rows = [["gemini (the emulator)", f"{run_cpu['gemini']:.1f}", f"{batch_cpu['gemini']:.1f}"]]
    rows += [[name, f"{run_cpu[name]:.1f}", f"{batch_cpu[name]:.1f}"] for name in others]
    rows.append(["**every stack process**", f"**{sum(run_cpu.values()):.1f}**", f"**{sum(batch_cpu.values()):.1f}**"])
    rows.append(["bare encoder, same texts", f"{bare_cpu:.1f}", ""])
    return rows


def run(bench: BenchRun) -> Section:
    from bench_emulator import bare_encoder

    n = 2_000 if bench.quick else 20_000
    texts = passages(n)
    bench.stack.reset()
    # The bare encoder's two halves go before and after the pipeline run: a neighbour's load that comes
    # or goes during the run weighs on both sides alike.
    loads = [os.getloadavg()[0]]
    first_wall, first_cpu = bare_encoder(texts[: n // 2], THREADS)
    loads.append(os.getloadavg()[0])
    pipe = _pipeline_run(bench, texts)
    loads.append(os.getloadavg()[0])
    second_wall, second_cpu = bare_encoder(texts[n // 2:], THREADS)
    loads.append(os.getloadavg()[0])
    bare_wall, bare_cpu = first_wall + second_wall, first_cpu + second_cpu

    total, seg, batch = pipe["total"], pipe["segments"], pipe["batch_seconds"]
    overhead = (total - bare_wall) / bare_wall * 100
    poll = seg["polling latency (batch end -> COMPLETING)"]
    work = total - batch - poll
    stack_cpu = sum(pipe["cpu_run"].values())
    background = sum(v for k, v in pipe["cpu_batch"].items() if k != "gemini")
    tick = float(bench.stack.env.get("POLLER_TICK_SECONDS", 2))
    no_poll_latency = (total - poll + tick / 2 - bare_wall) / bare_wall * 100
    avg_chars = sum(map(len, texts)) / n

    rows = [[k, f"{v:.1f}", f"{v / total * 100:.0f}%"] for k, v in seg.items()]
    rows.append(["**total, upload to event**", f"**{total:.1f}**", "100%"])
    polls = ", ".join(f"{p:.0f}" for p in pipe["polls"]) or "none"
    body = f"""
{n:,} distinct passages (bench_models' realistic sentences, {avg_chars:.0f} characters on average; one
{pipe['input_mb']:.1f} MB .jsonl), 768 dimensions, {pipe['shards']} shard(s). The emulator encoded
{pipe['encoded']:,} texts ({pipe['cache_hits']} cache hits).

{md_table(["", "seconds", "texts/s", "CPU seconds"], [
    ["bare encoder, in process (half before, half after)", f"{first_wall:.1f} + {second_wall:.1f} = {bare_wall:.1f}",
     f"{n / bare_wall:.1f}", f"{bare_cpu:.1f}"],
    ["local stack, upload to event", f"{total:.1f}", f"{n / total:.1f}", f"{stack_cpu:.1f} (every stack process)"],
])}

**Overhead: {overhead:+.1f}% wall** (target < {TARGET_OVERHEAD:.0f}%); {(stack_cpu - bare_cpu) / bare_cpu * 100:+.1f}% CPU.
Load average (1 min) before the first half, before the run, after it, after the second half:
{", ".join(f"{x:.2f}" for x in loads)} (2 cores).

Where the time went (one host clock: upload here, job `created_at`, batch `createTime`/`endTime`, the job
first seen COMPLETING by a Firestore listener, job `completed_at`, event received here):

{md_table(["segment", "seconds", "share"], rows)}

The overhead ({total - bare_wall:.1f} s over the bare encoder) =
the emulator's batch over bare encoding ({batch - bare_wall:+.1f} s)
+ polling latency ({poll:.1f} s)
+ pipeline work outside the batch: upload, submit, complete, event ({work:.1f} s).
Polls of the RUNNING job were seen +{polls} s after the batch was created: the first is due
`interval_for_size({n})` after submission; once the batch reports progress, the next one comes at its
estimated end (pending items at the pace so far) when that is sooner than max(size interval, age / 10).
What is left of the latency is the estimate's error plus up to one tick of the ticker (every {tick:.0f} s;
Cloud Scheduler's minute in the cloud). With polling latency cut to half a tick this run would have been
{no_poll_latency:+.1f}% (computed from this run, not measured).

CPU seconds by process (sampled every second), over the run and while the batch ran
({batch:.1f} s; the other processes took {background:.1f} CPU s of the 2 cores meanwhile):

{md_table(["process", "run", "during the batch"], _cpu_rows(pipe, bare_cpu))}

Reading it: the emulator's batch took {pipe['cpu_batch']['gemini']:.0f} CPU s for the texts the bare encoder
embedded in {bare_cpu:.0f} CPU s ({pipe['cpu_batch']['gemini'] / bare_cpu:.2f}x): the rest is the emulator's
own work (reading the uploaded file, the lift to 768 dimensions, writing the responses file). The
complete segment ({seg['complete (hand-over, fetch, write)']:.1f} s for {n:,} results) is split by stage in
section 3.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[Target(f"pipeline overhead < {TARGET_OVERHEAD:.0f}% at {n:,} passages",
                        overhead < TARGET_OVERHEAD, f"{overhead:+.1f}%")],
        plot={"bare": bare_wall, "segments": seg, "total": total, "n": n, "overhead": overhead},
    )
