"""3. Complete: fetch, normalise and write 100,000 x 768 results, against numpy's normalise-and-save.

One shard of 100,000 rows written by one `complete` invocation (COMPLETE_MAX_ROWS at 100,000: the
default, 50,000, would write it in two; section 8 spreads 100k over 4 shards and 2 instances through the
stack). The Gemini emulator would need many minutes to embed 100k
texts, so `complete` is fed by a provider of our own port (`LocalResultsProvider`) that streams a
pre-generated responses file from local disk, line by line, through the same parsing as the real adapter
(`shared.gemini.models.parse_result`, then `gemini_provider.to_item_result`); only the HTTP download is
missing. Lines are the emulator's format, `{"key", "response": {"embedding": {"values": [...]}}}`, float32
values at their shortest digits. The staged records file is written in the staging layout
(`JobPaths.input_records`) in fake-gcs-server, and the job (RUNNING, staged, one open shard) and its shard
(SUCCEEDED) in the Firestore emulator; outputs go to fake-gcs-server through `GcsBlobStore`. Three child
processes, each with its own peak RSS:

- numpy: `np.load` (not timed), then `m /= np.linalg.norm(m, axis=1, keepdims=True); np.save(...)`;
- complete: `complete.write_shard` itself (what one message to `complete` does: records,
  `write_shard_output`, the shard's transaction, results dropped, and, being the job's last shard, the
  job finished: manifest, event, staging cleanup); wrappers of the provider and blob-store ports and of
  `output.load_records` time parsing, uploads and record loading where they happen;
- stages: the in-memory part of `write_shard_output`'s loop, rebuilt from `output`'s own helpers with a
  timer per stage (JSONL only counted, Parquet to a local file), on the same responses file.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import (
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
)
from shared.adapters.gcs_blobs import WRITE_CHUNK_SIZE
from shared.ports import ItemResult
from shared.services.output import BLOCK_ROWS

__all__ = ["NAME", "TITLE", "LocalResultsProvider", "run"]

NAME = "complete"
TITLE = "3. Complete: fetch, normalise and write 100k x 768 results"
DIMS = 768
SECONDS_TARGET = 10.0
RSS_TARGET_MB = 500


class LocalResultsProvider(UnusedProvider):
    """A provider whose every batch's results are one local responses file (the emulator's line format).
    `seconds` adds up the time spent reading and parsing lines (not the consumer's time between them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.seconds = 0.0

    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        from shared.adapters.gemini_provider import to_item_result
        from shared.gemini.models import parse_result

        with self.path.open("rb", buffering=1 << 20) as lines:
            number = 0
            while True:
                started = time.perf_counter()
                line = lines.readline()
                if not line:
                    break
                # bytes, as the real client hands them over (`_byte_lines` of the download)
                result = to_item_result(parse_result(orjson.loads(line), number)) if line.strip() and number >= start else None
                number += 1
                self.seconds += time.perf_counter() - started
                if result is not None:
                    yield result

    def delete_results(self, name: str) -> bool:
        return True  # nothing kept: the shard's capacity is released at once



# -- setup (in the parent) -----------------------------------------------------------------------------


def _generate(workdir: Path, n: int) -> tuple[Path, Path]:
    """Vectors (n, DIMS) float32 of norm about 1 (as the emulator's truncated ones), saved as .npy and as
    a responses file, keys "0".."n-1"."""
    vectors = np.random.default_rng(3).standard_normal((n, DIMS), dtype=np.float32) * np.float32(DIMS ** -0.5)
    array, responses = workdir / "vectors.npy", workdir / "responses.jsonl"
    np.save(array, vectors)
    with responses.open("wb") as out:
        for start in range(0, n, 1000):
            out.write(b"".join(
                orjson.dumps({"key": str(i), "response": {"embedding": {"values": vectors[i]}}},
                             option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                for i in range(start, min(start + 1000, n))))
    return array, responses


def _seed_job(bench: BenchRun, n: int, responses_bytes: int) -> tuple[str, str]:
    """The staged records (staging layout, fake-gcs-server), a RUNNING staged job with one open shard and
    that shard SUCCEEDED (Firestore); returns (job id, records URI)."""
    from google.cloud import firestore

    from shared.adapters.firestore_jobs import FirestoreJobRepository
    from shared.adapters.gcs_blobs import GcsBlobStore
    from shared.adapters.gemini_provider import GEMINI_MODELS
    from shared.config import Settings
    from shared.domain.jobs import Counts, Job, JobState, Shard, ShardState, SourceObject, Staging, job_id_for
    from shared.domain.paths import JobPaths

    env = bench.stack.env
    settings = Settings()
    source = SourceObject(bucket=env["INPUT_BUCKET"], name="manual/bench/complete.jsonl", generation="1",
                          size=responses_bytes)
    paths = JobPaths.for_source(source, env["OUTPUT_BUCKET"], env["OUTPUT_PREFIX"])
    blobs = GcsBlobStore(bench.stack.storage_client())
    records = paths.input_records(0)
    with blobs.open_write(records, "application/jsonl") as out:
        for start in range(0, n, 1000):
            out.write(b"".join(
                orjson.dumps({"key": str(i), "id": f"doc-{i}", "text": f"text {i}", "title": f"Title {i}",
                              "metadata": {"n": i, "src": "bench"}, "tokens": 3}) + b"\n"
                for i in range(start, min(start + 1000, n))))
    now = datetime.now(UTC)
    ledger = GEMINI_MODELS[settings.default_model].ledger_key
    job = Job(
        job_id=job_id_for(source.bucket, source.name, source.generation), source=source,
        options=settings.default_options(), state=JobState.RUNNING, created_at=now, updated_at=now,
        submitted_at=now, deadline_at=now + timedelta(hours=72), next_poll_at=now + timedelta(hours=1),
        ledger=ledger, staging=Staging(done=True, next_key=n, segments=1), counts=Counts(total=n),
    )
    shard = Shard(job_id=job.job_id, index=0, state=ShardState.SUCCEEDED, records_uri=records, request_count=n,
                  ledger=ledger, batch_name="batches/bench-complete", succeeded=n, created_at=now, updated_at=now)
    client = firestore.Client()
    repository = FirestoreJobRepository(client, env["JOBS_COLLECTION"])
    repository.create(job)

    def add(tx: Any) -> None:
        tx.job.allocate_shard()
        tx.added.append(shard)

    repository.update(job.job_id, add)
    return job.job_id, records


# -- the children ------------------------------------------------------------------------------------------


def _numpy(args: dict[str, Any]) -> dict[str, Any]:
    matrix = np.load(args["array"])
    before = peak_memory()
    started = time.perf_counter()
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    np.save(args["out"], matrix)
    return {"seconds": time.perf_counter() - started, "rss_before_mb": before["vm_rss_mb"]}


def _stages(args: dict[str, Any]) -> dict[str, Any]:
    """The in-memory stages of `write_shard_output`'s loop, rebuilt from `output`'s own helpers with one
    timer per stage (JSONL only counted, Parquet to a local file), and one variant for comparison: the
    embedding column zstd-compressed (still without a dictionary) instead of stored uncompressed."""
    import pyarrow.parquet as pq

    from shared.bootstrap import build_context
    from shared.config import Settings
    from shared.services import output

    ctx = build_context(Settings(input_prefix="manual/"))
    records = output.load_records(ctx, args["records_uri"])
    provider = LocalResultsProvider(args["responses"])
    seconds: dict[str, float] = {}
    variant: dict[str, float] = {}
    work = Path(args["workdir"])
    rows = np.empty((BLOCK_ROWS, DIMS), dtype=np.float32)
    with (work / "plain.parquet").open("wb") as plain_file, (work / "zstd.parquet").open("wb") as zstd_file:
        sink = output._ParquetSink(plain_file, DIMS, records)
        zstd = copy.copy(sink)
        zstd.writer = pq.ParquetWriter(zstd_file, sink.schema, compression="zstd", use_dictionary=[
            field.name for field in sink.schema if field.name != "embedding"])

        def flush(good: list[Any]) -> None:
            with stopwatch(seconds, "L2 normalise"):
                matrix = rows[: len(good)]
                matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
            with stopwatch(seconds, "metadata decode"):
                metadata = [item.metadata for item in good]
            with stopwatch(seconds, "JSONL encode"):
                b"".join(output._jsonl_row(item, meta, row) for item, meta, row in zip(good, metadata, matrix, strict=True))
            with stopwatch(seconds, "Parquet encode (embedding uncompressed)"):
                sink.write(good, metadata, matrix)
            with stopwatch(variant, "Parquet encode, embedding zstd"):
                zstd.write(good, metadata, matrix)

        results = provider.iter_results("batches/bench-complete")
        while block := list(islice(results, BLOCK_ROWS)):
            with stopwatch(seconds, "match keys, check, to float32 rows"):
                good = []
                for result in block:
                    item = records.items.get(result.key)
                    if item is not None and output._problem(result, DIMS) is None:
                        rows[len(good)] = result.values
                        good.append(item)
            flush(good)
        with stopwatch(seconds, "Parquet encode (embedding uncompressed)"):
            sink.close()
        with stopwatch(variant, "Parquet encode, embedding zstd"):
            zstd.close()
    sizes = {name: (work / f"{name}.parquet").stat().st_size for name in ("zstd", "plain")}
    for name in sizes:
        (work / f"{name}.parquet").unlink()
    return {"seconds": {"parse (orjson.loads + parse_result)": provider.seconds, **seconds},
            "variant": variant, "parquet_bytes": sizes}


def _complete(args: dict[str, Any]) -> dict[str, Any]:
    """`complete.write_shard` itself, with the time in parsing, in loading the staged records and in
    writing to fake-gcs-server taken where it happens (wrappers of the ports and of `output.load_records`)."""
    from shared.bootstrap import build_context
    from shared.config import Settings
    from shared.services import complete as complete_module
    from shared.services import output

    ctx = build_context(Settings(input_prefix="manual/", complete_max_rows=args["rows"]))  # all in one invocation
    provider, blobs = LocalResultsProvider(args["responses"]), TimedBlobStore(ctx.blobs)
    ctx = replace(ctx, providers={provider.name: provider}, blobs=blobs).for_invocation()
    timings: dict[str, float] = {}
    write_shard_output, load_records = complete_module.write_shard_output, output.load_records

    def timed_write(*a: Any, **k: Any) -> Any:
        with stopwatch(timings, "write_shard_output"):
            return write_shard_output(*a, **k)

    def timed_load(*a: Any, **k: Any) -> Any:
        with stopwatch(timings, "load staged records"):
            return load_records(*a, **k)

    complete_module.write_shard_output, output.load_records = timed_write, timed_load
    before = peak_memory()
    started = time.perf_counter()
    outcome = complete_module.write_shard(ctx, args["job_id"], 0)
    seconds = time.perf_counter() - started
    job = ctx.jobs.get(args["job_id"])
    shard = ctx.jobs.get_shard(args["job_id"], 0)
    return {"outcome": outcome, "seconds": seconds, "succeeded": job.counts.succeeded, "state": job.state.value,
            "write_shard_output": timings.get("write_shard_output", 0.0),
            "load_records": timings.get("load staged records", 0.0), "parse": provider.seconds,
            "upload": blobs.seconds.get("write", 0.0), "rss_before_mb": before["vm_rss_mb"],
            "jsonl_bytes": shard.output.embeddings.size if shard.output else 0,
            "parquet_bytes": shard.output.parquet.size if shard.output else 0}


def _child(args: dict[str, Any]) -> dict[str, Any]:
    return {"numpy": _numpy, "stages": _stages, "complete": _complete}[args.pop("mode")](args)


# -- the benchmark -----------------------------------------------------------------------------------------


def run(bench: BenchRun) -> Section:
    n = 10_000 if bench.quick else 100_000
    bench.stack.reset()
    began = time.perf_counter()
    array, responses = _generate(bench.workdir, n)
    job_id, records_uri = _seed_job(bench, n, responses.stat().st_size)
    print(f"  {n:,} x {DIMS} results generated ({responses.stat().st_size / 1e6:,.0f} MB responses file) "
          f"and staged in {time.perf_counter() - began:.0f} s", flush=True)
    module = "benchmarks.bench_complete"
    raw = run_child(module, {"mode": "numpy", "array": str(array), "out": str(bench.workdir / "normalised.npy")})
    stages = run_child(module, {"mode": "stages", "responses": str(responses), "records_uri": records_uri,
                                "workdir": str(bench.workdir)})
    done = run_child(module, {"mode": "complete", "responses": str(responses), "job_id": job_id, "rows": n})
    bench.stack.reset()
    if done["outcome"] != "written_and_finished" or done["succeeded"] != n or done["state"] != "SUCCEEDED":
        raise RuntimeError(f"write_shard ended {done['outcome']} ({done['state']}) with {done['succeeded']} of {n} succeeded")

    seconds, rss = done["seconds"], done["memory"]["vm_hwm_mb"]
    cpu = stages["seconds"]
    encode_in_situ = done["write_shard_output"] - done["parse"] - done["load_records"] - done["upload"]
    rest = seconds - done["write_shard_output"]
    stage_rows = [
        ["load the staged records (fake-gcs)", f"{done['load_records']:.2f}", "write_shard"],
        ["parse (orjson.loads + parse_result)", f"{done['parse']:.2f}", "write_shard"],
        ["match, check, normalise, JSONL + Parquet encode", f"{encode_in_situ:.2f}",
         "write_shard (the rest of write_shard_output)"],
        *[[f"&nbsp;&nbsp;{k}", f"{v:.2f}", "stages child, CPU only"] for k, v in cpu.items() if not k.startswith("parse")],
        ["upload to fake-gcs (write + close of the output streams)", f"{done['upload']:.2f}", "write_shard"],
        ["the rest: leases, the shard's transaction, results dropped, the job finished (manifest, event, cleanup)",
         f"{rest:.2f}", "write_shard"],
        ["**write_shard**", f"**{seconds:.2f}**", ""],
    ]
    without_upload = seconds - done["upload"]
    variant = stages["variant"]
    cpu_total = done["parse"] + sum(v for k, v in cpu.items() if not k.startswith("parse"))
    chunks = done["jsonl_bytes"] // WRITE_CHUNK_SIZE + 1
    body = f"""
{n:,} results x {DIMS} dimensions; responses file {responses.stat().st_size / 1e6:,.0f} MB; outputs
{done['jsonl_bytes'] / 1e6:,.0f} MB JSONL + {done['parquet_bytes'] / 1e6:,.0f} MB Parquet written to
fake-gcs-server. Each row of the first table is its own child process.

{md_table(["", "seconds", "peak RSS MB (VmHWM)", "RSS before MB", "vs numpy"], [
    ["numpy: norm + np.save of the same array", f"{raw['seconds']:.2f}", f"{raw['memory']['vm_hwm_mb']:.0f}",
     f"{raw['rss_before_mb']:.0f} (array loaded)", "1x"],
    ["**`complete.write_shard`**, one message's whole work", f"**{seconds:.2f}**", f"**{rss:.0f}**",
     f"{done['rss_before_mb']:.0f}", f"{seconds / raw['seconds']:.0f}x"],
    ["of which `write_shard_output`", f"{done['write_shard_output']:.2f}", "", "",
     f"{done['write_shard_output'] / raw['seconds']:.0f}x"],
    ["`write_shard` without the time in fake-gcs uploads", f"{without_upload:.2f}", "", "",
     f"{without_upload / raw['seconds']:.0f}x"],
])}

Targets: under {SECONDS_TARGET:.0f} s **{'met' if seconds < SECONDS_TARGET else 'missed'}** ({seconds:.1f} s);
under {RSS_TARGET_MB} MB **{'met' if rss < RSS_TARGET_MB else 'missed'}** ({rss:.0f} MB).

Per stage. Parse, record loading and upload were timed inside `write_shard` (wrappers of the provider
and blob-store ports and of `output.load_records`); the split of the in-memory work comes from a second
child that runs the same loop from `output`'s own helpers on the same file, one timer per stage
(blocks of {BLOCK_ROWS:,} rows):

{md_table(["stage", "seconds", "measured in"], stage_rows)}

Where the time goes, and what is left to gain:

- Reading the staged records ({done['load_records']:.2f} s for {n:,} records): `GcsBlobStore.open_read`
  hands out the Cloud Storage reader behind an `io.BufferedReader` (the library's reader has no `peek`,
  so line iteration used to call `read(1)` once per byte); this covers every line loop over a blob
  (`output.load_records`, `complete._lines`, `batches._inline_requests`).
- Parse and float32: the client splits the download into byte lines (no decoding to text) and orjson
  parses them; `write_shard_output` copies each result's values into a preallocated float32 block of
  {BLOCK_ROWS:,} rows as it arrives, so no block of Python floats is held. orjson's Python floats
  ({done['parse']:.1f} s) and their copy to float32 ({cpu['match keys, check, to float32 rows']:.1f} s) are
  the largest CPU cost left.
- Parquet: the embedding column is written without dictionary encoding (trying a dictionary on
  {n * DIMS / 1e6:,.1f} million distinct floats was most of the Parquet time) and uncompressed:
  {cpu['Parquet encode (embedding uncompressed)']:.2f} s for {stages['parquet_bytes']['plain'] / 1e6:,.0f} MB;
  zstd on it (no dictionary) took {variant['Parquet encode, embedding zstd']:.2f} s for
  {stages['parquet_bytes']['zstd'] / 1e6:,.0f} MB (float32 vectors barely compress).
- Uploads ({done['upload']:.1f} s): writes go in resumable chunks of {WRITE_CHUNK_SIZE >> 20} MiB, one
  chunk of memory per open writer. fake-gcs-server recomputes the CRC32C and MD5 of everything received
  so far on every chunk, so chunk k of an object costs in proportion to k and the
  {done['jsonl_bytes'] / 1e6:,.0f} MB JSONL file ({chunks} chunks) costs quadratic time. Cloud Storage does
  not behave so: the seconds without uploads are the ones to compare.
- What is left is CPU in one Python process: {cpu_total:.1f} s for {n:,} rows in the stages above (parse,
  float32 rows, normalise, JSONL, Parquet), growing with the rows one invocation writes. A job's shards
  are written by separate invocations (one message per shard; the last one's transaction finishes the
  job), and `COMPLETE_MAX_ROWS` bounds the rows, and the time, of each invocation; the job's
  completion time is then that of its slowest shard when enough instances run (section 8).
- Memory ({rss:.0f} MB of {RSS_TARGET_MB}): the shard's key -> (id, title, metadata) map, one float32
  block of {BLOCK_ROWS:,} x {DIMS}, one block's JSONL bytes, and up to about two upload chunks per output
  writer.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body,
        targets=[Target(f"complete {n:,} x {DIMS} in one invocation < {SECONDS_TARGET:.0f} s", seconds < SECONDS_TARGET,
                        f"{seconds:.1f} s"),
                 Target(f"complete {n:,} x {DIMS} peak RSS < {RSS_TARGET_MB} MB", rss < RSS_TARGET_MB, f"{rss:.0f} MB")],
        plot={"stages": {"load records": done["load_records"], "parse": done["parse"],
                         **{k.split(" (")[0]: v for k, v in cpu.items() if not k.startswith("parse")},
                         "upload": done["upload"], "rest": rest},
              "numpy": raw["seconds"], "complete": seconds, "n": n, "rss": rss,
              "numpy_rss": raw["memory"]["vm_hwm_mb"]},
    )



def plot(ax: Any, p: dict[str, Any]) -> None:
    names = list(p["stages"]) + ["numpy norm + save"]
    values = list(p["stages"].values()) + [p["numpy"]]
    ax.barh(names, values, color=["tab:blue"] * len(p["stages"]) + ["grey"])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"3. complete {p['n']:,} x 768 in one invocation: {p['complete']:.1f} s (target 10 s),\n"
                 f"peak RSS {p['rss']:.0f} MB (target 500 MB); seconds by stage")


if __name__ == "__main__":
    child_main(_child)
