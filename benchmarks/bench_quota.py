"""6. Living inside a quota (issue 13): 200 files of mixed sizes, together over 5M estimated tokens, uploaded
at once against a Gemini emulator whose project quota is 300,000 enqueued tokens and 10 concurrent
batches (`PUT /_emulator/quotas`). Two runs, each on a local stack of its own:

- `learned`: the pipeline's ENQUEUED_TOKENS_LIMIT far above the quota (5,000,000): it must learn the
  real cap from the emulator's 429s (no Retry-After), as on an account whose cap is lower than configured;
- `equal`: ENQUEUED_TOKENS_LIMIT equal to the quota (300,000).

Both runs: CONCURRENT_BATCHES_LIMIT 10 (the emulator's batch cap, as an operator sets the published
one), the default MAX_TOKENS_PER_BATCH (100,000), the scheduler's tick every 60 s as deployed
(POLLER_TICK_SECONDS; batch ends arrive by webhook), KEEP_STAGING on (the shards' records are read back
afterwards to count each batch's tokens the emulator's way). The emulator runs its hash encoder
(`GEMINI_EMULATOR_ENCODER=hash`: no model), counts tokens with its WordPiece tokenizer
(`GEMINI_EMULATOR_TOKEN_COUNTER=wordpiece`, what its quota counts), and takes a fixed time per item (the
fault `seconds_per_item`, 0.25 s), so a batch of n items takes n x that and the run measures scheduling.
At 0.05 s per item these batches took 3 s on average, no longer than the stack's own turnaround per batch
on two busy cores (upload, create, webhook, download, release, each through an emulator), which then
dominated the quota's use; real batches take minutes to hours.

Measured: every job's event (SUCCEEDED, all items), the emulator's own figures (`GET /_emulator/stats`:
creates, quota rejections by limit, peak enqueued tokens and active batches), and, sampled every 0.5 s,
the emulator's `enqueuedTokens` and whether any shard waits (a STAGED shard exists: one Firestore
aggregation query over the `shards` collection group). Time-weighted use of the quota = the integral of
enqueuedTokens over the sampled intervals during which a shard waited, over quota x their length.

The ideal makespan, for the batches as the pipeline cut them: at every moment the emulator holds at most
Q = 300,000 tokens (its count) and 10 batches, so with T_b the emulator's tokens of batch b and D_b its
duration (createTime -> endTime, as the emulator reports them): makespan >= max(sum T_b D_b / Q,
sum D_b / 10). The first is (total tokens / quota) x the token-weighted mean batch duration, i.e. the time
the emulator takes to process one quota's worth of these batches; the second is the batch cap's bound.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from benchmarks.common import (
    BenchRun,
    EmulatorAdmin,
    EventWatcher,
    Sampler,
    Section,
    Target,
    epoch,
    long_texts,
    md_table,
    upload_bytes,
)

__all__ = ["NAME", "TITLE", "run"]

NAME = "quota"
TITLE = "6. Inside a quota: 200 files, 5M tokens, 300k enqueued tokens and 10 batches"
QUOTA_TOKENS = 300_000
QUOTA_BATCHES = 10
REFUSED_SHARE_TARGET = 1.0  # percent of creates
USE_TARGET = 80.0  # percent of the quota, time-weighted, while work waits
SAMPLE_SECONDS = 0.5
SECONDS_PER_ITEM = 0.25
# The scheduler's tick as deployed (Cloud Scheduler: every minute), not the local stack's 2 s: batch ends
# come by webhook and admit at once; the tick is the fallback. (With 2 s ticks from the poller's two
# instances, every tick's admission is one more transaction on the ledger document.)
TICK_SECONDS = 60


def _files(count: int, total_tokens: int, seed: int = 13) -> list[list[bytes]]:
    """`count` JSONL files (as lists of lines) of log-uniformly mixed sizes (1 to 100 units), together at
    least `total_tokens` estimated tokens (the pipeline's estimate); texts of 600-2,400 characters,
    no titles (the emulator counts a title, the pipeline's estimate does not)."""
    from bench_models import realistic_sentences

    from shared.ingest import estimate_tokens

    rng = random.Random(seed)
    weights = [math.exp(rng.uniform(0, math.log(100))) for _ in range(count)]
    goals = [max(int(total_tokens * w / sum(weights)) + 1, 1000) for w in weights]
    texts = long_texts(rng, realistic_sentences(5000, seed=seed), 600, 2400)
    files = []
    for number, goal in enumerate(goals):
        lines, tokens = [], 0
        while tokens < goal:
            text = next(texts)
            tokens += estimate_tokens(text)
            lines.append(orjson.dumps({"id": f"f{number}-{len(lines)}", "text": text}) + b"\n")
        files.append(lines)
    return files


def _overrides(limit: int, seconds_per_item: float) -> dict[str, str]:
    return {
        "POLLER_TICK_SECONDS": str(TICK_SECONDS),
        "GEMINI_EMULATOR_ENCODER": "hash",
        "GEMINI_EMULATOR_TOKEN_COUNTER": "wordpiece",
        "GEMINI_EMULATOR_QUOTAS": json.dumps({"enqueued_tokens": QUOTA_TOKENS, "concurrent_batches": QUOTA_BATCHES}),
        "GEMINI_EMULATOR_FAULTS": json.dumps({"seconds_per_item": seconds_per_item}),
        "ENQUEUED_TOKENS_LIMIT": str(limit),
        "CONCURRENT_BATCHES_LIMIT": str(QUOTA_BATCHES),
        "KEEP_STAGING": "true",
    }


def _waiting_probe(stack: Any) -> Any:
    """Whether any shard waits for capacity: one aggregation query over every job's shards."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    from shared.adapters.firestore_jobs import shards_collection
    from shared.config import Settings

    client = firestore.Client()
    query = client.collection_group(shards_collection(Settings().jobs_collection)).where(filter=FieldFilter("state", "==", "STAGED"))
    ledgers = client.collection(Settings().ledgers_collection)

    def waiting() -> tuple[int, int]:
        """(STAGED shards, estimated tokens the ledger holds)."""
        result = query.count(alias="n").get()
        held = sum(sum(h.get("tokens", 0) for h in (doc.to_dict().get("holds") or {}).values())
                   for doc in ledgers.stream())
        return int(result[0][0].value), held

    return waiting


def _one_run(bench: BenchRun, label: str, limit: int, files: list[list[bytes]], seconds_per_item: float) -> dict[str, Any]:
    from shared.domain.jobs import job_id_for

    with bench.own_stack(f"quota-{label}", _overrides(limit, seconds_per_item)) as stack:
        emulator = EmulatorAdmin.of(stack)
        waiting = _waiting_probe(stack)

        def probe() -> dict[str, Any]:
            stats = emulator.stats()
            staged, held = waiting()
            return {"tokens": stats["enqueuedTokens"]["total"], "batches": stats["activeBatches"], "waiting": staged,
                    "ledger": held}

        client = stack.storage_client()
        prefix = stack.env["INPUT_PREFIX"]
        with EventWatcher(stack) as events, Sampler(probe, SAMPLE_SECONDS) as sampler:
            began = time.time()

            def put(item: tuple[int, list[bytes]]) -> str:
                number, lines = item
                blob = upload_bytes(stack, b"".join(lines), f"{prefix}quota/file-{number:03d}.jsonl", client=client)
                return job_id_for(blob.bucket.name, blob.name, str(blob.generation))

            with ThreadPoolExecutor(4) as pool:
                job_ids = list(pool.map(put, enumerate(files)))
            uploaded = time.time()
            print(f"  {label}: {len(files)} files uploaded in {uploaded - began:.1f} s", flush=True)
            received = events.wait_for_all(job_ids, timeout=3600, progress=lambda n: n % 25 == 0 and print(
                f"  {label}: {n} events after {time.time() - began:.0f} s", flush=True))
        ended = max(at for _, at in received.values())
        stats = emulator.stats()
        batches = _batches(stack, emulator, job_ids)
        ledger = _ledger()
    return {"label": label, "limit": limit, "began": began, "uploaded": uploaded, "ended": ended,
            "events": {job_id: event for job_id, (event, _) in received.items()}, "stats": stats,
            "samples": sampler.samples, "batches": batches, "ledger": ledger}


def _batches(stack: Any, emulator: EmulatorAdmin, job_ids: list[str]) -> list[dict[str, Any]]:
    """Every shard that got a batch: its batch's times and items (the emulator's resource), its tokens by
    the pipeline's estimate and by the emulator's WordPiece count of its records."""
    from google.cloud import storage

    from benchmarks.common import job_shards
    from infra.local.gemini_emulator.tokens import WordPieceCounter
    from shared.domain.paths import parse_gs_uri

    counter = WordPieceCounter()
    client = storage.Client()
    out = []
    for job_id in job_ids:
        for shard in job_shards(job_id):
            if not shard.batch_name:
                continue
            meta = emulator.batch(shard.batch_name)["metadata"]
            bucket, name = parse_gs_uri(shard.records_uri)
            texts = [orjson.loads(line)["text"] for line in
                     client.bucket(bucket).blob(name).download_as_bytes().splitlines() if line.strip()]
            out.append({"job": job_id, "shard": shard.index, "state": shard.state.value, "origin": shard.origin.value,
                        "items": shard.request_count, "estimated": shard.estimated_tokens,
                        "counted": sum(counter.count(texts)), "created": epoch(meta["createTime"]),
                        "ended": epoch(meta["endTime"]), "batch_state": meta["state"]})
    return out


def _ledger() -> dict[str, Any]:
    from google.cloud import firestore

    from shared.config import Settings

    client = firestore.Client()
    docs = [d.to_dict() for d in client.collection(Settings().ledgers_collection).stream()]
    return docs[0] if docs else {}


def _use_while_waiting(samples: list[tuple[float, dict[str, Any]]]) -> tuple[float, float, float, float]:
    """(time-weighted mean of the emulator's enqueued tokens while a shard waited, seconds with a shard
    waiting, mean active batches meanwhile, mean estimated tokens the ledger held meanwhile): each sample
    holds until the next one."""
    area = batches = ledger = seconds = 0.0
    for (t, value), (t_next, _) in zip(samples, samples[1:], strict=False):
        if value["waiting"]:
            span = t_next - t
            area += value["tokens"] * span
            batches += value["batches"] * span
            ledger += value["ledger"] * span
            seconds += span
    if not seconds:
        return 0.0, 0.0, 0.0, 0.0
    return area / seconds, seconds, batches / seconds, ledger / seconds


def _summary(r: dict[str, Any], total_items: int, total_estimated: int) -> dict[str, Any]:
    stats, batches = r["stats"], r["batches"]
    events = list(r["events"].values())
    statuses = Counter(e["status"] for e in events)
    succeeded = sum(e["counts"]["succeeded"] for e in events)
    failed = sum(e["counts"]["failed"] for e in events)
    rejections = stats.get("quotaRejections", {})
    refused = rejections.get("enqueued_tokens", 0) + rejections.get("concurrent_batches", 0)
    creates = stats["calls"].get("creates", 0)
    mean_tokens, waited, mean_batches, mean_ledger = _use_while_waiting(r["samples"])
    token_bound = sum(b["counted"] * (b["ended"] - b["created"]) for b in batches) / QUOTA_TOKENS
    slot_bound = sum(b["ended"] - b["created"] for b in batches) / QUOTA_BATCHES
    ideal = max(token_bound, slot_bound)
    counted = sum(b["counted"] for b in batches)
    return {
        "label": r["label"], "limit": r["limit"], "jobs": len(events), "statuses": dict(statuses),
        "succeeded": succeeded, "failed": failed, "all_ok": statuses.get("SUCCEEDED", 0) == len(events)
        and succeeded == total_items and failed == 0,
        "peak_tokens": stats["peakEnqueuedTokens"]["total"], "peak_batches": stats["peakActiveBatches"],
        "creates": creates, "refused": refused, "rejections": rejections,
        "refused_share": 100.0 * refused / creates if creates else 0.0,
        "use": 100.0 * mean_tokens / QUOTA_TOKENS, "waited": waited, "mean_batches": mean_batches,
        "ledger_use": 100.0 * mean_ledger / QUOTA_TOKENS,
        "makespan": r["ended"] - r["began"], "upload_seconds": r["uploaded"] - r["began"],
        "first_create": min(b["created"] for b in batches) - r["began"],
        "last_end": max(b["ended"] for b in batches) - r["began"],
        "batches": len(batches), "token_bound": token_bound, "slot_bound": slot_bound, "ideal": ideal,
        "counted": counted, "estimated": sum(b["estimated"] for b in batches), "total_estimated": total_estimated,
        "splits": sum(1 for b in batches if b["origin"] == "split"),
        "ledger": {k: r["ledger"].get(k) for k in ("limit", "learned_limit", "creates", "refusals", "splits")},
        "timeline": [(t - r["began"], v["tokens"], v["waiting"]) for t, v in r["samples"]],
    }


def run(bench: BenchRun) -> Section:
    count, total = (40, 1_000_000) if bench.quick else (200, 5_000_000)
    seconds_per_item = SECONDS_PER_ITEM
    files = _files(count, total)
    from shared.ingest import estimate_tokens

    total_items = sum(len(f) for f in files)
    total_estimated = sum(estimate_tokens(orjson.loads(line)["text"]) for f in files for line in f)
    sizes = sorted(sum(estimate_tokens(orjson.loads(line)["text"]) for line in f) for f in files)
    print(f"  {count} files, {total_items:,} records, {total_estimated:,} estimated tokens "
          f"(files of {sizes[0]:,} to {sizes[-1]:,})", flush=True)
    runs = [_summary(_one_run(bench, label, limit, files, seconds_per_item), total_items, total_estimated)
            for label, limit in (("learned", 5_000_000), ("equal", QUOTA_TOKENS))]
    return _section(bench, runs, count, total_items, total_estimated, sizes, seconds_per_item)


def _section(bench: BenchRun, runs: list[dict[str, Any]], count: int, items: int, estimated: int,
             sizes: list[int], seconds_per_item: float) -> Section:
    rows = []
    for s in runs:
        rows.append([
            f"{s['label']} (ENQUEUED_TOKENS_LIMIT {s['limit']:,})",
            f"{s['statuses'].get('SUCCEEDED', 0)}/{s['jobs']} SUCCEEDED, {s['succeeded']:,} items, {s['failed']} failed",
            f"{s['peak_tokens']:,} / {s['peak_batches']}",
            f"{s['refused']} of {s['creates']} ({s['refused_share']:.1f}%)",
            f"{s['use']:.0f}% over {s['waited']:.0f} s (ledger's estimate: {s['ledger_use']:.0f}%)",
            f"{s['makespan']:.0f} s", f"{s['ideal']:.0f} s", f"{s['makespan'] / s['ideal']:.2f}x",
        ])
    detail = []
    for s in runs:
        detail.append([
            s["label"], s["batches"], s["splits"], f"{s['counted']:,}", f"{s['estimated']:,}",
            f"{s['counted'] / s['estimated']:.2f}", f"{s['token_bound']:.0f} / {s['slot_bound']:.0f}",
            f"{s['first_create']:.0f} / {s['last_end']:.0f}", f"{s['mean_batches']:.1f}",
            json.dumps(s["rejections"]), json.dumps(s["ledger"]),
        ])
    targets = []
    for s in runs:
        tag = f"{s['label']}:"
        targets += [
            Target(f"{tag} every job SUCCEEDED, none failed for quota", s["all_ok"],
                   f"{s['statuses']}, {s['failed']} items failed"),
            Target(f"{tag} peak enqueued tokens <= {QUOTA_TOKENS:,}", s["peak_tokens"] <= QUOTA_TOKENS,
                   f"{s['peak_tokens']:,}"),
            Target(f"{tag} creates refused with 429 <= {REFUSED_SHARE_TARGET:.0f}%",
                   s["refused_share"] <= REFUSED_SHARE_TARGET, f"{s['refused']} of {s['creates']} ({s['refused_share']:.1f}%)"),
            Target(f"{tag} quota used >= {USE_TARGET:.0f}% while work waits", s["use"] >= USE_TARGET, f"{s['use']:.0f}%"),
        ]
    ratio = runs[0]["counted"] / runs[0]["estimated"]
    body = f"""
{count} JSONL files uploaded together (4 uploads at a time), {items:,} records of 600-2,400 characters
(realistic sentences, no titles), {estimated:,} tokens by the pipeline's estimate; file sizes log-uniform
from {sizes[0]:,} to {sizes[-1]:,} estimated tokens. Emulator: quota {QUOTA_TOKENS:,} enqueued tokens and
{QUOTA_BATCHES} concurrent batches, {seconds_per_item} s per item, hash encoder, WordPiece token counts.

{md_table(["run", "events", "peak tokens / batches", "creates refused (429)", "quota used while work waits",
           "makespan", "ideal", "ratio"], rows)}

Makespan: first upload started -> last completion event received. Ideal: max(sum T_b D_b / Q, sum D_b / 10)
over the run's own batches (see the module docstring). Details:

{md_table(["run", "batches", "split shards", "tokens, emulator's count", "tokens, pipeline's estimate",
           "count / estimate", "token bound / batch bound s", "first create / last batch end s",
           "mean active batches while work waits", "emulator's 429s by limit", "ledger at the end"], detail)}

What the emulator counts is not what the pipeline estimates. The quota is counted by the emulator's
WordPiece tokenizer (all-MiniLM-L6-v2's, over each request's text); the pipeline admits by its own
estimate (`shared/ingest/tokens.py`, about a word per four characters, on the high side by design). On
these texts the emulator counted {ratio:.2f} tokens per estimated token. So a ledger told the quota itself
(`equal`) admits at most {QUOTA_TOKENS:,} estimated tokens, about {ratio * QUOTA_TOKENS:,.0f} of the
emulator's: it can never fill more than about {100 * ratio:.0f}% of the quota as the emulator counts it.
Neither counter is Gemini's tokenizer: against the live API the ratio differs, and the live API reports no
token counts for batch embeddings, so the pipeline cannot calibrate it from answers.
"""
    return Section(
        name=NAME, title=TITLE, command=bench.command(NAME), body=body, targets=targets,
        plot={"runs": [{"label": s["label"], "timeline": s["timeline"], "use": s["use"]} for s in runs],
              "quota": QUOTA_TOKENS},
    )


def plot(ax: Any, data: dict[str, Any]) -> None:
    for run in data["runs"]:
        xs = [t for t, _, _ in run["timeline"]]
        ax.plot(xs, [tokens for _, tokens, _ in run["timeline"]], label=f"{run['label']}: {run['use']:.0f}% used while work waits")
    ax.axhline(data["quota"], color="red", linestyle="--", label="quota")
    ax.set_xlabel("seconds since the first upload")
    ax.set_ylabel("enqueued tokens (emulator's count)")
    ax.set_title("6. 200 files against a 300k-token, 10-batch quota")
    ax.legend(fontsize=7)
