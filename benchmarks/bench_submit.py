"""2. Submit: seconds, MB/s and peak RSS of the submit use case at 10 MB, 100 MB and 1 GB.

Each input is a generated .jsonl (`common.write_jsonl_input`: 200-1,200 character texts, a title and
metadata per record) uploaded under `manual/`, which the stack's submit function ignores. Then a child
process runs `submit_object` over the stack's real services: it reads the object from fake-gcs-server,
stages the shards back into it, uploads the requests through the Gemini emulator's Files API and creates
the batch, with the job in the Firestore emulator. The emulator holds batches PENDING (fault
`pending_seconds`), so only the submission is measured. The provider's upload and create calls are timed
by a delegating wrapper of the `BatchProvider` port; staging is the rest. The stack is reset between sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from benchmarks.common import (
    MB,
    BenchRun,
    Section,
    Target,
    TimedBlobStore,
    child_main,
    md_table,
    peak_memory,
    run_child,
    upload_file,
    write_jsonl_input,
)
from shared.ports import BatchProvider, ItemResult, ProviderBatch

__all__ = ["NAME", "TITLE", "run"]

NAME = "submit"
TITLE = "2. Submit: seconds, MB/s and peak RSS by input size"
RSS_LIMIT_MB = 300
HOLD_BATCHES = {"pending_seconds": 36000}


class TimedProvider(BatchProvider):
    """Delegates to a real provider and adds up the seconds of its upload and create calls; while it
    uploads, the blob store's reads (of the staged requests) are counted apart, under "upload:read"."""

    def __init__(self, inner: BatchProvider, blobs: TimedBlobStore):
        self.inner, self.blobs = inner, blobs
        self.seconds = {"upload": 0.0, "create": 0.0}

    def upload_requests(self, chunks: Iterable[bytes], size: int, display_name: str) -> str:
        started = time.perf_counter()
        self.blobs.phase = "upload"
        try:
            return self.inner.upload_requests(chunks, size, display_name)
        finally:
            self.blobs.phase = ""
            self.seconds["upload"] += time.perf_counter() - started

    def create_batch(self, **kwargs: Any) -> ProviderBatch:
        started = time.perf_counter()
        try:
            return self.inner.create_batch(**kwargs)
        finally:
            self.seconds["create"] += time.perf_counter() - started

    def find_batch(self, display_name_suffix: str, created_after: datetime) -> ProviderBatch | None:
        return self.inner.find_batch(display_name_suffix, created_after)

    def get_batch(self, name: str) -> ProviderBatch:
        return self.inner.get_batch(name)

    def cancel_batch(self, name: str) -> None:
        self.inner.cancel_batch(name)

    def iter_results(self, name: str) -> Iterator[ItemResult]:
        return self.inner.iter_results(name)


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """In the child: one `submit_object` over the stack's services (the environment points at them)."""
    from shared.bootstrap import build_context
    from shared.config import Settings
    from shared.domain.jobs import SourceObject
    from shared.services.submit import submit_object

    ctx = build_context(Settings(input_prefix="manual/"))
    blobs = TimedBlobStore(ctx.blobs, reads=True)  # staging and the upload call read(n)
    provider = TimedProvider(ctx.provider, blobs)
    ctx = replace(ctx, provider=provider, blobs=blobs)
    source = SourceObject(**args["source"])
    before = peak_memory()
    started = time.perf_counter()
    result = submit_object(ctx, source)
    seconds = time.perf_counter() - started
    job = ctx.jobs.get(result.job_id)
    return {
        "outcome": result.outcome.value, "seconds": seconds, "provider": provider.seconds, "blobs": blobs.seconds,
        "records": job.counts.total, "problems": job.counts.input_problems, "shards": len(job.shards),
        "staged_bytes": sum(s.request_bytes for s in job.shards), "rss_before_mb": before["vm_rss_mb"],
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
            r["name"], f"{r['bytes'] / MB:,.0f}", f"{r['records']:,}", r["shards"], f"{r['seconds']:.1f}",
            f"{r['bytes'] / MB / r['seconds']:.1f}", f"{r['memory']['vm_hwm_mb']:.0f}", f"{r['rss_before_mb']:.0f}",
            f"{r['memory']['ru_maxrss_mb']:.0f}",
        ])
        split.append([
            r["name"], f"{staging:.1f}", f"{read:.1f}", f"{write:.1f}", f"{staging - read - write:.1f}",
            f"{r['staged_bytes'] / MB:,.0f}", f"{r['provider']['upload']:.1f}",
            f"{r['blobs'].get('upload:read', 0.0):.1f}", f"{r['provider']['create']:.2f}",
        ])
    worst = max(r["memory"]["vm_hwm_mb"] for r in results)
    largest = max(results, key=lambda r: r["bytes"])
    body = f"""
`submit_object` in a child process over the stack's real services (fake-gcs-server, the Firestore
emulator, the Gemini emulator with batches held PENDING by the fault `{json.dumps(HOLD_BATCHES)}`): read the object,
stage the shards (requests and records JSONL, written back to fake-gcs-server), upload the requests through
the Files API (resumable, 8 MiB chunks), create the batch.

{md_table(["input", "MB", "records", "shards", "seconds", "MB/s", "peak RSS MB (VmHWM)",
           "RSS after imports MB", "ru_maxrss MB"], rows)}

Where the seconds went. Staging = total - Files upload - create; within it, the time inside the blob
streams' read() (the input from fake-gcs-server) and write()/close() (the staged shards to it, where the
chunk uploads happen), and the rest: decoding, parsing and encoding records, and the job's Firestore writes.
The Files upload reads the staged requests back from fake-gcs-server (shown apart) and sends them to the
emulator.

{md_table(["input", "staging s", "read input s", "write shards s", "parse + encode s", "staged MB",
           "Files upload s", "of which reading back s", "create s"], split)}

Peak RSS is the child's VmHWM; `ru_maxrss` is shown for reference only: Linux starts a child's ru_maxrss at
its parent's RSS. The worst peak, {worst:.0f} MB, is {'under' if worst < RSS_LIMIT_MB else 'OVER'} the
{RSS_LIMIT_MB} MB target.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME, *(["--with-txt"] if bench.with_txt else [])), body=body,
        targets=[Target(f"submit peak RSS < {RSS_LIMIT_MB} MB at {largest['bytes'] / MB:,.0f} MB",
                        worst < RSS_LIMIT_MB, f"{worst:.0f} MB")],
        plot={"sizes": [r["bytes"] / MB for r in results], "names": [r["name"] for r in results],
              "rss": [r["memory"]["vm_hwm_mb"] for r in results], "seconds": [r["seconds"] for r in results],
              "limit": RSS_LIMIT_MB},
    )


if __name__ == "__main__":
    child_main(_child)
