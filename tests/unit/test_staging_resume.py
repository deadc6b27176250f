"""Staging resumed across invocations stages exactly what one long invocation would: the same records under
the same keys, the same problems (duplicate ids across the cut included), whatever the format, whether the
ids were saved or rebuilt, and whatever crash interrupted a delivery."""

from __future__ import annotations

import contextlib
import gzip

import orjson
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, SourceObject
from shared.domain.paths import JobPaths
from shared.errors import TransientError
from shared.services.leasing import LeaseLost
from shared.services.submit import resume_submission, submit_object
from tests.fakes import Crash, FakeClock, make_context, mortal


def upload(ctx, name: str, data: bytes, content_type: str, encoding: str | None = None) -> SourceObject:
    name = ctx.settings.input_prefix + name
    uri = f"gs://{ctx.settings.input_bucket}/{name}"
    info = ctx.blobs.put(uri, data, content_type, content_encoding=encoding)
    return SourceObject(bucket=ctx.settings.input_bucket, name=name, generation=info.generation, size=len(data),
                        content_type=content_type, content_encoding=encoding)


def staged(ctx, job_id: str) -> tuple[list[tuple], list[tuple]]:
    """(key, id, text) of every staged record, and (line, code) of every problem, in order."""
    job = ctx.jobs.get(job_id)
    paths = JobPaths.for_source(job.source, ctx.settings.output_bucket, ctx.settings.output_prefix)
    records, problems = [], []
    for uri in sorted(u for u in ctx.blobs.objects if u.startswith(paths.staging)):
        name = uri.rsplit("/", 1)[1]
        if name.startswith("records-"):
            records += [(r["key"], r["id"], r["text"]) for r in map(orjson.loads, ctx.blobs.read(uri).splitlines())]
        elif name.startswith("problems-"):
            problems += [(r.get("line"), r["code"]) for r in map(orjson.loads, ctx.blobs.read(uri).splitlines())]
    return sorted(records, key=lambda r: int(r[0])), problems


def stage(data: bytes, name: str, content_type: str, *, budget: float, encoding: str | None = None,
          crash_every: int | None = None) -> tuple[list, list, int]:
    """Stage a file to the end; returns its records, problems and the number of deliveries it took."""
    ctx = make_context(Settings(max_tokens_per_batch=300, stage_budget_seconds=budget), clock=FakeClock())
    source = upload(ctx, name, data, content_type, encoding)
    job_id = submit_object(ctx.for_invocation(), source).job_id
    deliveries = 1
    while not ctx.jobs.get(job_id).staging.done and not ctx.jobs.get(job_id).terminal:
        deliveries += 1
        assert deliveries < 500, "staging does not advance"
        worker = ctx.for_invocation()
        if crash_every and deliveries % 3 == 0:
            worker, _ = mortal(ctx, crash_every)
        with contextlib.suppress(Crash, TransientError):
            resume_submission(worker, job_id)
        ctx.clock.advance(seconds=ctx.settings.lease_seconds + 1)  # a crashed worker's lease lapses
    assert ctx.jobs.get(job_id).state != JobState.FAILED, ctx.jobs.get(job_id).error
    records, problems = staged(ctx, job_id)
    return records, problems, deliveries


def jsonl_with_problems(n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"id": f"r{i}", "text": f"record {i} says something rather long " * 3}))
        if i % 37 == 5:
            lines.append(orjson.dumps({"id": f"r{i // 2}", "text": "a duplicate of an earlier id"}))
        if i % 53 == 7:
            lines.append(b"{not json")
    return b"\n".join(lines) + b"\n"


def prose(paragraphs: int) -> bytes:
    return "\n\n".join(f"Paragraph {p}. " + " ".join(f"word{p}_{w}" for w in range(60))
                       for p in range(paragraphs)).encode()


CASES = {
    "jsonl": (jsonl_with_problems(400), "a.jsonl", "application/jsonl", None),
    "jsonl_gzip": (gzip.compress(jsonl_with_problems(300)), "a.jsonl.gz", "application/jsonl", None),
    "csv": (b"id,text\n" + b"".join(f"c{i},row {i} of a table with words\n".encode() for i in range(500))
            + b"c3,a duplicate\n", "t.csv", "text/csv", None),
    "text": (prose(120), "book.txt", "text/plain", None),
    "text_utf16": (prose(60).decode().encode("utf-16"), "book16.txt", "text/plain; charset=utf-16", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_staging_stages_what_one_invocation_would(case):
    data, name, content_type, encoding = CASES[case]
    whole = stage(data, name, content_type, budget=10_000, encoding=encoding)
    resumed = stage(data, name, content_type, budget=0, encoding=encoding)
    assert whole[2] == 1 and resumed[2] > 5, "one delivery, then many"
    assert resumed[0] == whole[0] and len(whole[0]) > 50
    assert resumed[1] == whole[1]
    if case in ("jsonl", "csv"):
        assert ("DUPLICATE_ID" in {code for _, code in whole[1]}), "duplicates across cuts are found"


@pytest.mark.parametrize("case", ["jsonl", "text"])
def test_deliveries_killed_anywhere_still_stage_each_record_once(case):
    data, name, content_type, encoding = CASES[case]
    whole = stage(data, name, content_type, budget=10_000, encoding=encoding)
    for crash_every in (2, 5, 9, 14):
        crashed = stage(data, name, content_type, budget=0, encoding=encoding, crash_every=crash_every)
        assert crashed[0] == whole[0], f"records differ when deliveries die after {crash_every} calls"
        assert crashed[1] == whole[1]


def test_a_stager_that_lost_the_job_after_it_ended_leaves_no_staging_file():
    ctx = make_context(Settings(max_tokens_per_batch=300, stage_budget_seconds=0), clock=FakeClock())
    source = upload(ctx, "a.jsonl", jsonl_with_problems(100), "application/jsonl")
    job_id = submit_object(ctx.for_invocation(), source).job_id
    paths = JobPaths.for_source(source, ctx.settings.output_bucket, ctx.settings.output_prefix)
    blobs = ctx.blobs
    write = blobs.open_write

    @contextlib.contextmanager
    def stalls_then_the_job_ends(uri, content_type):  # a stager frozen while writing its segment
        with write(uri, content_type) as out:
            yield out
        if "/records-" in uri and not ended:
            ended.append(uri)
            ctx.clock.advance(seconds=ctx.settings.lease_seconds + 1)
            from shared.services.cancel import cancel_job
            cancel_job(ctx.for_invocation(), job_id)

    ended: list[str] = []
    blobs.open_write = stalls_then_the_job_ends
    try:
        with pytest.raises(LeaseLost):
            resume_submission(ctx.for_invocation(), job_id)
    finally:
        blobs.open_write = write
    job = ctx.jobs.get(job_id)
    assert job.state == JobState.CANCELLED and ended
    assert [u for u in blobs.objects if u.startswith(paths.staging)] == []
