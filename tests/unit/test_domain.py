"""Options, the state table, paths, schedules and the completion event: pure domain rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.gemini_provider import GEMINI_MODELS
from shared.domain.events import completion_event_for
from shared.domain.jobs import (
    FINAL_SHARD_STATES,
    JOB_TRANSITIONS,
    SHARD_TRANSITIONS,
    TERMINAL_JOB_STATES,
    ErrorInfo,
    InvalidTransition,
    Job,
    JobState,
    Shard,
    ShardState,
    SourceObject,
    job_id_for,
)
from shared.domain.options import JobOptions, OptionError, options_from_metadata
from shared.domain.paths import JobPaths, parse_gs_uri
from shared.domain.schedule import interval_for_size, next_poll_at

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "completion-event.schema.json").read_text())


def job(**fields) -> Job:
    source = SourceObject(bucket="in", name="incoming/a.txt", generation="7")
    return Job(job_id="job-x", source=source, created_at=NOW, updated_at=NOW, **fields)


# -- options --------------------------------------------------------------------------------------


def gemini(provider: str, model: str):
    if provider != "gemini":
        raise OptionError("provider", provider, ["gemini"])
    return GEMINI_MODELS[model]


def test_options_overlay_metadata_on_defaults_and_ignore_foreign_keys():
    opts = options_from_metadata({"Task-Type": "clustering", "dimensions": " 1536 ", "owner": "me", "reuse": "no"},
                                 JobOptions(), gemini)
    assert opts.task_type == "CLUSTERING" and opts.output_dimensionality == 1536
    assert opts.model == "gemini-embedding-001" and opts.reuse is False


@pytest.mark.parametrize(("metadata", "option", "allowed"), [
    ({"task_type": "nope"}, "task_type", "RETRIEVAL_DOCUMENT"),
    ({"output_dimensionality": "127"}, "output_dimensionality", "128 to 3072"),
    ({"output_dimensionality": "big"}, "output_dimensionality", "128 to 3072"),
    ({"chunk_size": "9999"}, "chunk_size", "2048"),
    ({"chunk_size": "100", "chunk_overlap": "100"}, "chunk_overlap", "chunk_size-1"),
    ({"on_bad_record": "ignore"}, "on_bad_record", "skip, fail"),
    ({"priority": "high"}, "priority", "integers"),
    ({"display_name": "x" * 129}, "display_name", "128"),
    ({"reuse": "maybe"}, "reuse", "true, false"),
    ({"provider": "openai"}, "provider", "gemini"),
    ({"id_column": "c" * 300}, "id_column", "256"),
])
def test_invalid_options_name_the_option_and_the_allowed_values(metadata, option, allowed):
    with pytest.raises(OptionError) as err:
        options_from_metadata(metadata, JobOptions(), gemini)
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


def shard(index: int = 0, **fields) -> Shard:
    return Shard(job_id="job-x", index=index, records_uri="gs://o/r", request_count=fields.pop("request_count", 10),
                 created_at=NOW, updated_at=NOW, **fields)


def test_final_shard_states_have_no_way_out():
    for state in FINAL_SHARD_STATES:
        assert SHARD_TRANSITIONS[state] == frozenset()


@given(st.lists(st.sampled_from(list(ShardState)), max_size=12))
def test_only_the_table_moves_a_shard(path):
    s = shard()
    for target in path:
        if target == s.state or target in SHARD_TRANSITIONS[s.state]:
            s.move_to(target, NOW)
            assert s.state == target
        else:
            with pytest.raises(InvalidTransition):
                s.move_to(target, NOW)
    if s.final:
        assert s.next_poll_at is None


def test_closing_shards_counts_each_item_at_its_latest_try():
    j = job()
    j.staging.done = True
    j.state = JobState.RUNNING
    j.counts.total = 17
    for _ in range(3):
        j.allocate_shard()
    parent = shard(0, state=ShardState.WRITTEN, succeeded=8, failed=2)
    assert j.close_shard(parent, NOW, carried=2) is False, "its 2 failed items go on in a follow-up"
    child = shard(j.allocate_shard(), request_count=2, state=ShardState.WRITTEN, succeeded=1, failed=1, parent=0)
    abandoned = shard(2, request_count=5, state=ShardState.ABANDONED)
    split = shard(1, state=ShardState.SPLIT)
    assert [j.close_shard(s, NOW) for s in (child, abandoned, split)] == [False, False, True]
    assert (j.counts.succeeded, j.counts.failed, j.counts.pending) == (9, 6, 2)
    assert j.open_shards == 0 and j.state == JobState.COMPLETING
    assert j.progress() == pytest.approx(100 * 15 / 17, abs=0.01) and j.success_rate == 60.0
    with pytest.raises(InvalidTransition):
        j.close_shard(shard(5, state=ShardState.RUNNING), NOW)


def test_a_job_completes_only_once_staged():
    j = job()
    j.state = JobState.SUBMITTING
    j.allocate_shard()
    assert j.close_shard(shard(0, state=ShardState.ABANDONED), NOW) is False, "more of the input may come"
    j.staging.done = True
    assert j.complete_if_done(NOW) is True and j.complete_if_done(NOW) is False


@given(st.text(max_size=5000), st.text(max_size=5000), st.dictionaries(st.text(max_size=50), st.text(max_size=500),
                                                                         max_size=60))
def test_user_strings_on_a_job_document_are_bounded(message, record_id, metadata):
    j = job()
    j.source = SourceObject(bucket="in", name="n", generation="1", metadata=metadata)
    j.error = ErrorInfo(code="X", message=message)
    for _ in range(50):
        j.input_problems.add_to_sample({"code": "BAD", "message": message, "record_id": record_id, "line": 1})
    assert len(j.error.message) <= 1000 and len(j.input_problems.sample) == 20
    assert all(len(e["message"]) <= 300 and len(e["record_id"]) <= 300 for e in j.input_problems.sample)
    assert sum(len(k.encode()) + len(v.encode()) for k, v in j.source.metadata.items()) <= 8192


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
    assert staged.input_records(0).startswith(staged.staging) and staged.follow_up_records(3).startswith(staged.staging)
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
