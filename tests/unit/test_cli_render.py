"""What the CLI shows: tables, the status view, event lines; and the exit codes of ended jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from embedpipe import render
from embedpipe.errors import JobNotFound
from embedpipe.search import Hit
from embedpipe.watch import WatchTimeout, exit_code_for, watch_jobs
from shared.domain.jobs import (
    Counts,
    ErrorInfo,
    Estimate,
    InputProblems,
    Job,
    JobOutput,
    JobState,
    Shard,
    ShardState,
    SourceObject,
)
from shared.domain.options import JobOptions

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(state: JobState = JobState.RUNNING, job_id: str = "job-1", **fields) -> Job:
    source = SourceObject(bucket="in", name="incoming/faq.jsonl", generation="42")
    return Job(job_id=job_id, source=source, state=state, options=JobOptions(output_dimensionality=256),
               created_at=NOW - timedelta(minutes=3), updated_at=NOW, **fields)


def text(renderable) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (59, "59s"), (61, "1m01s"), (600, "10m"), (3600 + 120, "1h02m"), (86400 * 2 + 3600 * 5, "2d05h"),
])
def test_age(seconds, shown):
    assert render.age(NOW - timedelta(seconds=seconds), NOW) == shown


def test_jobs_table_has_a_row_per_job_with_progress_counts_and_rate():
    running = job(counts=Counts(total=20, succeeded=9, failed=1))
    done = job(JobState.SUCCEEDED, "job-2", counts=Counts(total=5, succeeded=5))
    out = text(render.jobs_table([running, done], NOW))
    header, first, second = out.splitlines()[:3]
    assert header.split()[:3] == ["JOB", "STATE", "SOURCE"]
    assert first.split() == ["job-1", "RUNNING", "incoming/faq.jsonl", "50.0%", "9/1/20", "90.0%", "3m00s",
                             "waiting", "3m00s"]
    assert second.split()[:2] == ["job-2", "SUCCEEDED"] and "5/0/5" in second


def test_search_table_ranks_hits_with_their_passage_on_one_line():
    hits = [Hit("a", 0.91234, "first\n  passage", "T"), Hit("b", 0.5), Hit("c", 0.25, "y" * 400)]
    out = text(render.search_table(hits))
    header, first, second, third = out.splitlines()[:4]
    assert header.split() == ["#", "SCORE", "ID", "PASSAGE"]
    assert first.split() == ["1", "0.9123", "a", "first", "passage"]
    assert second.split() == ["2", "0.5000", "b", "(text", "unavailable)"]
    assert third.split()[:3] == ["3", "0.2500", "c"] and out.count("y") == 299 and out.count("…") == 1


def test_status_view_shows_every_section():
    from shared.views import _shard_row

    shard = Shard(job_id="job-1", index=0, request_count=20, records_uri="gs://o/s", state=ShardState.ABANDONED,
                  batch_name="batches/b1", batch_attempts=2, estimated_tokens=1000, created_at=NOW, updated_at=NOW,
                  provider_error=ErrorInfo(code="EXPIRED", message="the provider ended the batch EXPIRED"))
    failed = job(
        JobState.PARTIALLY_SUCCEEDED, counts=Counts(total=20, succeeded=15, failed=5, input_problems=2),
        completed_at=NOW, first_admitted_at=NOW - timedelta(minutes=2),
        estimate=Estimate(input_tokens=1000, cost_batch_usd=0.000075, cost_interactive_usd=0.00015),
        input_problems=InputProblems(count=2, sample=[{"code": "MISSING_TEXT", "message": "no text", "line": 7}],
                                     uri="gs://o/input-errors.jsonl"),
        output=JobOutput(prefix="gs://o/p/", manifest="gs://o/p/manifest.json", files=1, errors="gs://o/p/errors.jsonl"),
    )
    view = {"progress_percentage": 100.0, "waited_seconds": 60.0,
            "shards": {"count": 1, "open": 0, "list": [_shard_row(shard)]},
            "queue": {"position": 3, "tokens_ahead": 250_000, "estimated_start": "2026-01-01T12:05:00+00:00"},
            "capacity": {"ledger": "gemini~gemini-embedding-001", "tokens_held": 400_000, "effective_limit": 500_000,
                         "batches_held": 4}}
    out = text(render.status_view(failed, view, NOW))
    for expected in (
        "PARTIALLY_SUCCEEDED", "gs://in/incoming/faq.jsonl#42", "256 dims", "100.0%",
        "15 succeeded, 5 failed, 0 pending of 20 (2 input problems)", "75.0%",
        "$0.000075 batch vs $0.000150 interactive (1,000 tokens; saves $0.000075)",
        "batches/b1", "ABANDONED", "shard 0: EXPIRED: the provider ended the batch EXPIRED",
        "line 7: MISSING_TEXT: no text", "gs://o/input-errors.jsonl",
        "position 3, 250,000 tokens ahead, estimated start 2026-01-01T12:05:00+00:00", "60 s for capacity",
        "400,000 tokens in flight of 500,000 (gemini~gemini-embedding-001), 4 batches",
        "gs://o/p/manifest.json", "1 embeddings files", "gs://o/p/errors.jsonl",
    ):
        assert expected in out, expected


def test_event_line_is_one_line_with_status_counts_and_output():
    event = {"job_id": "job-1", "status": "FAILED", "completed_at": "2026-01-01T12:00:00Z",
             "source": {"bucket": "in", "name": "a.jsonl", "generation": "1"},
             "counts": {"total": 3, "succeeded": 0, "failed": 3}, "success_rate": 0.0,
             "error": {"code": "EXPIRED", "message": "expired"}}
    line = render.event_line(event)
    assert "\n" not in line
    assert line.startswith("2026-01-01T12:00:00Z FAILED") and "job-1 gs://in/a.jsonl 0/3 ok (0.0%)" in line
    assert line.endswith("[EXPIRED: expired]")


# -- exit codes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("states", "code"), [
    (["SUCCEEDED"], 0),
    (["SUCCEEDED", "SUCCEEDED"], 0),
    (["SUCCEEDED", "PARTIALLY_SUCCEEDED"], 2),
    (["PARTIALLY_SUCCEEDED", "FAILED"], 1),
    (["SUCCEEDED", "CANCELLED"], 1),
    (["FAILED"], 1),
])
def test_exit_codes_of_ended_jobs(states, code):
    assert exit_code_for(states) == code


def test_active_jobs_have_no_exit_code():
    with pytest.raises(ValueError, match="still active"):
        exit_code_for(["SUCCEEDED", "RUNNING"])


class FakeTime:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_watch_reads_until_every_job_ended_and_stops_reading_ended_ones():
    clock = FakeTime()
    timeline = {"a": [None, job(job_id="a"), job(JobState.SUCCEEDED, "a")],
                "b": [job(JobState.FAILED, "b")]}
    reads: list[str] = []

    def get(job_id):
        reads.append(job_id)
        states = timeline[job_id]
        return states.pop(0) if len(states) > 1 else states[0]

    updates = []
    ended = watch_jobs(["a", "b"], get, updates.append, interval=2, clock=clock)
    assert {k: v.state for k, v in ended.items()} == {"a": JobState.SUCCEEDED, "b": JobState.FAILED}
    assert reads.count("b") == 1, "an ended job is not read again"
    assert len(updates) == 3 and clock.t == 4


def test_watch_gives_up_on_a_job_that_never_appears():
    clock = FakeTime()
    with pytest.raises(JobNotFound, match="no job ghost after 10s"):
        watch_jobs(["ghost"], lambda _: None, lambda _: None, interval=2, appear_timeout=10, clock=clock)


def test_watch_times_out_with_exit_code_3():
    clock = FakeTime()
    with pytest.raises(WatchTimeout, match="still running: a") as err:
        watch_jobs(["a"], lambda _: job(job_id="a"), lambda _: None, interval=1, timeout=5, clock=clock)
    assert err.value.exit_code == 3
