"""Options, the state table, paths, schedules and the completion event: pure domain rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.events import completion_event_for
from shared.domain.jobs import (
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATES,
    InvalidTransition,
    Job,
    JobState,
    Shard,
    ShardMode,
    ShardState,
    SourceObject,
    job_id_for,
)
from shared.domain.options import JobOptions, OptionError, TaskType, options_from_metadata
from shared.domain.paths import JobPaths, parse_gs_uri
from shared.domain.schedule import interval_for_size, next_poll_at

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "completion-event.schema.json").read_text())


def job(**fields) -> Job:
    source = SourceObject(bucket="in", name="incoming/a.txt", generation="7")
    return Job(job_id="job-x", source=source, created_at=NOW, updated_at=NOW, **fields)


# -- options --------------------------------------------------------------------------------------


def test_options_overlay_metadata_on_defaults_and_ignore_foreign_keys():
    opts = options_from_metadata({"Task-Type": "clustering", "dimensions": " 1536 ", "owner": "me"}, JobOptions())
    assert opts.task_type == TaskType.CLUSTERING and opts.output_dimensionality == 1536
    assert opts.model == "gemini-embedding-001"


@pytest.mark.parametrize(("metadata", "option", "allowed"), [
    ({"task_type": "nope"}, "task_type", "RETRIEVAL_DOCUMENT"),
    ({"output_dimensionality": "127"}, "output_dimensionality", "128 to 3072"),
    ({"output_dimensionality": "big"}, "output_dimensionality", "128 to 3072"),
    ({"chunk_size": "9999"}, "chunk_size", "2048"),
    ({"chunk_size": "100", "chunk_overlap": "100"}, "chunk_overlap", "chunk_size-1"),
    ({"on_bad_record": "ignore"}, "on_bad_record", "skip, fail"),
    ({"priority": "high"}, "priority", "integers"),
    ({"display_name": "x" * 129}, "display_name", "128"),
])
def test_invalid_options_name_the_option_and_the_allowed_values(metadata, option, allowed):
    with pytest.raises(OptionError) as err:
        options_from_metadata(metadata, JobOptions())
    assert err.value.option == option
    assert f"invalid option {option}=" in str(err.value) and allowed in str(err.value)


# -- states ---------------------------------------------------------------------------------------


def test_terminal_states_have_no_way_out():
    for state in TERMINAL_JOB_STATES:
        assert JOB_TRANSITIONS[state] == frozenset()


@given(st.lists(st.sampled_from(list(JobState)), max_size=12))
def test_only_the_table_moves_a_job(path):
    j = job()
    for target in path:
        allowed = target == j.state or target in JOB_TRANSITIONS[j.state]
        if allowed:
            j.move_to(target, NOW)
            assert j.state == target
        else:
            with pytest.raises(InvalidTransition):
                j.move_to(target, NOW)
    if j.terminal:
        assert j.completed_at is not None and j.next_poll_at == NOW, "ended jobs stay due until announced"


def test_counts_take_each_item_at_its_latest_try():
    shards = [
        Shard(index=0, mode=ShardMode.INLINE, request_count=10, request_bytes=1, requests_uri="r", records_uri="c",
              state=ShardState.WRITTEN, succeeded=8, failed=2),
        Shard(index=1, mode=ShardMode.INLINE, request_count=2, request_bytes=1, requests_uri="r", records_uri="c",
              state=ShardState.WRITTEN, succeeded=1, failed=1, parent=0, item_attempt=2),
        Shard(index=2, mode=ShardMode.INLINE, request_count=5, request_bytes=1, requests_uri="r", records_uri="c",
              state=ShardState.ABANDONED),
    ]
    j = job(shards=shards)
    j.counts.total = 17
    j.refresh_counts()
    assert (j.counts.succeeded, j.counts.failed, j.counts.pending) == (9, 6, 2)
    assert j.progress_percentage == pytest.approx(100 * 15 / 17, abs=0.01)
    assert j.success_rate == 60.0


def test_job_ids_are_stable_and_distinct_per_generation():
    assert job_id_for("b", "n", "1") == job_id_for("b", "n", 1)
    assert len({job_id_for("b", "n", "1"), job_id_for("b", "n", "2"), job_id_for("b", "n2", "1")}) == 3


# -- paths ----------------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=300))
def test_every_source_name_maps_inside_its_job_prefix(name):
    source = SourceObject(bucket="in", name=name, generation="5")
    paths = JobPaths.for_source(source, "out", "embeddings/")
    assert paths.prefix.startswith("gs://out/embeddings/") and paths.prefix.endswith("/5/")
    relative = paths.prefix[len("gs://out/embeddings/"):]
    assert ".." not in relative.split("/") and "." not in relative.split("/") and "" not in relative.split("/")[:-1]
    assert len(paths.manifest.encode()) < 1024
    _, object_name = parse_gs_uri(paths.manifest)
    assert object_name.startswith("embeddings/")


def test_staging_lives_under_one_sweepable_prefix_that_no_output_can_reach():
    staged = JobPaths.for_source(SourceObject(bucket="i", name="a/b.txt", generation="3"), "o", "embeddings/")
    assert staged.staging == "gs://o/embeddings/_staging/a/b.txt/3/"
    assert staged.requests(0).startswith(staged.staging)
    hostile = JobPaths.for_source(SourceObject(bucket="i", name="_staging/a/b.txt", generation="3"), "o", "embeddings/")
    assert not hostile.prefix.startswith("gs://o/embeddings/_staging/")


def test_long_names_are_cut_with_a_hash_so_they_stay_distinct():
    a = JobPaths.for_source(SourceObject(bucket="i", name="x" * 1000 + "a", generation="1"), "o", "p/")
    b = JobPaths.for_source(SourceObject(bucket="i", name="x" * 1000 + "b", generation="1"), "o", "p/")
    assert a.prefix != b.prefix and len(a.prefix.encode()) < 500


# -- schedule -------------------------------------------------------------------------------------


def test_poll_intervals_follow_the_guide_by_size_then_stretch_with_age_and_failures():
    assert [interval_for_size(n) for n in (10, 500, 5_000, 50_000)] == [2.0, 5.0, 10.0, 30.0]
    assert next_poll_at(NOW, size=10, age_seconds=0) == NOW + timedelta(seconds=2)
    assert next_poll_at(NOW, size=10, age_seconds=3600) == NOW + timedelta(seconds=360)
    assert next_poll_at(NOW, size=10, age_seconds=0, failures=3) == NOW + timedelta(seconds=16)
    assert next_poll_at(NOW, size=10, age_seconds=10**6) == NOW + timedelta(seconds=600)


# -- the completion event -------------------------------------------------------------------------


def test_the_completion_event_follows_its_published_schema():
    j = job(options=JobOptions(output_dimensionality=256), event_id="e-1")
    j.counts.total = 4
    j.move_to(JobState.FAILED, NOW)
    from shared.domain.jobs import ErrorInfo
    j.error = ErrorInfo(code="EMPTY_INPUT", message="empty")
    event = completion_event_for(j, 95.0)
    data = json.loads(event.data())
    jsonschema.validate(data, SCHEMA)
    assert data["dimensions"] == 256 and data["error"]["code"] == "EMPTY_INPUT" and "output" not in data
    attributes = event.attributes()
    assert attributes == {"job_id": "job-x", "event_id": "e-1", "status": "FAILED", "source_bucket": "in",
                          "source_name": "incoming/a.txt", "schema_version": "1"}


def test_attributes_stay_within_pubsub_limits_for_long_names():
    j = job(event_id="e")
    j.source.name = "é" * 1000
    j.move_to(JobState.CANCELLED, NOW)
    assert len(completion_event_for(j, 95).attributes()["source_name"].encode()) <= 1024


def test_only_ended_jobs_have_an_event():
    with pytest.raises(ValueError):
        completion_event_for(job(event_id="e"), 95.0)
