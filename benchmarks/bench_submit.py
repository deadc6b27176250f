"""2. Submit: seconds, MB/s and peak RSS of the submit use case at 10 MB, 100 MB and 1 GB.

Each input is a generated .jsonl (`common.write_jsonl_input`: 200-1,200 character texts, a title and
metadata per record) uploaded under `manual/`, which the stack's submit function ignores. Then a child
process runs `submit_object` over the default stack's real services, with the default settings except
the staging budget (none: the whole input in one invocation): it reads the object from fake-gcs-server,
stages its shards back into it (one records file and one transaction per shard, shards cut at 100,000
estimated tokens), then admits what the Tier 1 ledger allows (500,000 estimated tokens) and creates those
batches inline (each: its records read back, uploaded through the Gemini emulator's Files API, created).
The emulator holds batches PENDING (fault `pending_seconds`), so only the submission is measured, and the
stack's ticker is paused meanwhile (its poller would admit the staged shards first). The
provider's uploads and creates are timed by a delegating wrapper of the `BatchProvider` port, the jobs'
transactions by a wrapper of `JobRepository.update`; staging is the rest. The stack is reset between
sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from benchmarks.common import (
    MB,
    BenchRun,
    Section,
    Target,
    TimedBlobStore,
    UnusedProvider,
    child_main,
    md_table,
    peak_memory,
    run_child,
    stopwatch,
    upload_file,
    write_jsonl_input,
)
from shared.domain.options import JobOptions
from shared.ports import BatchProvider, ProviderBatch, StagedItem

__all__ = ["NAME", "TITLE", "run"]

NAME = "submit"
TITLE = "2. Submit: seconds, MB/s and peak RSS by input size"
RSS_LIMIT_MB = 300
HOLD_BATCHES = {"pending_seconds": 36000}


class TimedProvider(UnusedProvider):
    """Delegates to a real provider and adds up the seconds of its input uploads and creates; while it
    uploads, the blob store's reads (of the staged records) are counted apart, under "upload:read"."""

    def __init__(self, inner: BatchProvider, blobs: TimedBlobStore):
        self.inner, self.blobs = inner, blobs
        self.name = inner.name
        self.seconds = {"upload": 0.0, "create": 0.0}
        self.creates = 0

    def capabilities(self, model: str) -> Any:
        return self.inner.capabilities(model)

    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions,
                      display_name: str) -> tuple[str, int]:
        started = time.perf_counter()
        self.blobs.phase = "upload"
        try:
            return self.inner.prepare_input(items, options, display_name)
        finally:
            self.blobs.phase = ""
            self.seconds["upload"] += time.perf_counter() - started

    def create_batch(self, **kwargs: Any) -> ProviderBatch:
        started = time.perf_counter()
        try:
            self.creates += 1
            return self.inner.create_batch(**kwargs)
        finally:
            self.seconds["create"] += time.perf_counter() - started

    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        return self.inner.find_batches(tag, created_after)

    def get_batch(self, name: str) -> ProviderBatch:
        return self.inner.get_batch(name)

    def delete_input(self, input_ref: str) -> None:
        self.inner.delete_input(input_ref)


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """In the child: one `submit_object` over the stack's services (the environment points at them), with
    no staging budget (the whole input in one invocation, as the benchmark measures it)."""
    from shared.bootstrap import build_context
    from shared.config import Settings
    from shared.domain.jobs import SourceObject
    from shared.services.submit import submit_object

    ctx = build_context(Settings(input_prefix="manual/", stage_budget_seconds=36_000))
    blobs = TimedBlobStore(ctx.blobs, reads=True)  # staging reads the input with read(n)
    provider = TimedProvider(ctx.provider, blobs)
    transactions: dict[str, float] = {}
    update = ctx.jobs.update

    def timed_update(*a: Any, **k: Any) -> Any:
        with stopwatch(transactions, "jobs"):
            return update(*a, **k)

    ctx.jobs.update = timed_update  # type: ignore[method-assign]
    ctx = replace(ctx, providers={provider.name: provider}, blobs=blobs)
    source = SourceObject(**args["source"])
    before = peak_memory()
    started = time.perf_counter()
    result = submit_object(ctx, source)
    seconds = time.perf_counter() - started
    job = ctx.jobs.get(result.job_id)
    shards = list(ctx.jobs.shards(result.job_id))
    return {
        "outcome": result.outcome.value, "seconds": seconds, "provider": provider.seconds, "blobs": blobs.seconds,
        "records": job.counts.total, "problems": job.counts.input_problems, "shards": len(shards),
        "batches": sum(1 for s in shards if s.batch_name), "creates": provider.creates,
        "transactions": transactions.get("jobs", 0.0), "tokens": job.estimate.input_tokens,
        "staged_bytes": sum(s.request_bytes for s in shards), "rss_before_mb": before["vm_rss_mb"],
    }


def _measure(bench: BenchRun, size: int, kind: str) -> dict[str, Any]:
    stack = bench.stack
    path = bench.workdir / f"submit-{size // MB}MB.{kind}"
    began = time.perf_counter()
    if kind == "jsonl":
        write_jsonl_input(path, size)
        content_type = "application/jsonl"
    else:
        from bench_ingest import generate_text

        generate_text(path, size)
        content_type = "text/plain"
    blob = upload_file(stack, path, f"manual/bench/{path.name}", content_type)
    path.unlink()
    setup = time.perf_counter() - began
    bench.emulator.set_faults(HOLD_BATCHES)
    source = {"bucket": blob.bucket.name, "name": blob.name, "generation": str(blob.generation),
              "size": blob.size, "content_type": blob.content_type}
    try:
        with stack.ticker_paused():  # the stack's poller would admit the staged shards before the child does
            result = run_child("benchmarks.bench_submit", {"source": source})
    finally:
        stack.reset()  # frees fake-gcs-server's memory; the held batch and the job go too
    if result["outcome"] != "submitted":
        raise RuntimeError(f"submit of {path.name} ended {result['outcome']}")
    result.update(name=path.name, bytes=blob.size, setup_seconds=setup)
    return result


def run(bench: BenchRun) -> Section:
    sizes = [(1 * MB, "jsonl"), (10 * MB, "jsonl")] if bench.quick else \
        [(10 * MB, "jsonl"), (100 * MB, "jsonl"), (1000 * MB, "jsonl")]
    if bench.with_txt:
        sizes.append((sizes[-1][0], "txt"))
    bench.stack.reset()
    results = []
    for size, kind in sizes:
        results.append(_measure(bench, size, kind))
        r = results[-1]
        print(f"  {r['name']}: {r['seconds']:.1f} s, VmHWM {r['memory']['vm_hwm_mb']:.0f} MB "
              f"(input generated and uploaded in {r['setup_seconds']:.0f} s)", flush=True)
    rows, split = [], []
    for r in results:
        staging = r["seconds"] - r["provider"]["upload"] - r["provider"]["create"]
        read, write = r["blobs"].get("read", 0.0), r["blobs"].get("write", 0.0)
        rows.append([
            r["name"], f"{r['bytes'] / MB:,.0f}", f"{r['records']:,}", f"{r['shards']:,}", r["batches"],
            f"{r['seconds']:.1f}", f"{r['bytes'] / MB / r['seconds']:.1f}", f"{r['memory']['vm_hwm_mb']:.0f}",
            f"{r['rss_before_mb']:.0f}",
        ])
        split.append([
            r["name"], f"{staging:.1f}", f"{read:.1f}", f"{write:.1f}", f"{r['transactions']:.1f}",
            f"{staging - read - write - r['transactions']:.1f}", f"{r['staged_bytes'] / MB:,.0f}",
            f"{r['provider']['upload']:.1f}", f"{r['blobs'].get('upload:read', 0.0):.1f}", f"{r['provider']['create']:.2f}",
        ])
    worst = max(r["memory"]["vm_hwm_mb"] for r in results)
    largest = max(results, key=lambda r: r["bytes"])
    body = f"""
`submit_object` in a child process over the stack's real services (fake-gcs-server, the Firestore
emulator, the Gemini emulator with batches held PENDING by the fault `{json.dumps(HOLD_BATCHES)}`): read the
object, stage its shards, admit what the ledger allows and create those batches.

{md_table(["input", "MB", "records", "shards", "batches created", "seconds", "MB/s", "peak RSS MB (VmHWM)",
           "RSS after imports MB"], rows)}

Where the seconds went. Staging = total - Files uploads - creates; within it, the time inside the blob
streams' read() (the input from fake-gcs-server) and write()/close() (the records files to it), the jobs'
transactions (one per shard: its document created with the job's new staging position; plus the lease and
option saves), and the rest: decoding, parsing and encoding records. The Files uploads read the staged
records back from fake-gcs-server (shown apart) and send them to the emulator.

{md_table(["input", "staging s", "read input s", "write records s", "transactions s", "parse + encode s",
           "staged MB", "Files uploads s", "of which reading back s", "creates s"], split)}

Peak RSS is the child's VmHWM. The worst peak, {worst:.0f} MB, is {'under' if worst < RSS_LIMIT_MB else 'OVER'} the
{RSS_LIMIT_MB} MB target. Shards are cut by the Tier 1 default (MAX_TOKENS_PER_BATCH 100,000), so the
shard count, and the transactions with it, grow with the input's tokens: about one per 360 kB of this
English text.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME, *(["--with-txt"] if bench.with_txt else [])), body=body,
        targets=[Target(f"submit peak RSS < {RSS_LIMIT_MB} MB at {largest['bytes'] / MB:,.0f} MB",
                        worst < RSS_LIMIT_MB, f"{worst:.0f} MB")],
        plot={"sizes": [r["bytes"] / MB for r in results], "names": [r["name"] for r in results],
              "rss": [r["memory"]["vm_hwm_mb"] for r in results], "seconds": [r["seconds"] for r in results],
              "limit": RSS_LIMIT_MB},
    )



def plot(ax: Any, p: dict[str, Any]) -> None:
    ax.plot(p["sizes"], p["rss"], "o-", label="peak RSS (VmHWM)")
    for size, rss, secs, name in zip(p["sizes"], p["rss"], p["seconds"], p["names"], strict=True):
        ax.annotate(f"{name.split('-')[1]} {secs:.0f} s", (size, rss), textcoords="offset points", xytext=(4, 6),
                    fontsize=8)
    ax.axhline(p["limit"], color="red", linestyle="--", label=f"target {p['limit']} MB")
    ax.set_xscale("log")
    ax.set_xlabel("input MB")
    ax.set_ylabel("MB")
    ax.set_ylim(0, max(max(p["rss"]), p["limit"]) * 1.2)
    ax.set_title("2. submit: peak RSS by input size (seconds annotated)")
    ax.legend(fontsize=8)


if __name__ == "__main__":
    child_main(_child)
