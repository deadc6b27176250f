"""Hostile files through the real stack: uploaded with google-cloud-storage, each job awaited by its
completion event on a Pub/Sub subscription.

The whole corpus (`tests/hostile/corpus.py`) is uploaded at once and run together (the stack is built
for concurrent jobs, and one at a time would take minutes); each case is then one test. For each: the
job ended with exactly one completion event whose status is the job's; a failed job's error, or the
job's problems, say what was wrong (code, line, message); every good record was embedded, once; the
finalize event was acknowledged on its first delivery (no crash loop); the staging files are gone. Across
the corpus: nothing was written outside the jobs' own output and staging prefixes, and nothing in the
input bucket.

The gzip bomb runs through the stack too, against the suite's MAX_DECOMPRESSED_BYTES of 32 MiB (see
`conftest.py`): the guard and its message are the same whatever the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from google.api_core.exceptions import NotFound
from google.cloud import storage

from infra.local.processes import wait_until
from shared.domain.jobs import job_id_for
from tests.hostile.corpus import CASE_KEYS, Case, all_cases, jsonl, record, unicode_name_cases
from tests.hostile.hostile_helpers import (
    await_events,
    bucket_objects,
    check_output_layout,
    deliver_finalize,
    deliveries_of,
    job_doc,
    output_rows,
    staging_left,
)
from tests.integration.pipeline_helpers import EventSubscription, read_gs

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 540.0  # returns as soon as every event arrived; `make test` runs this beside the integration suite
TERMINAL = {"SUCCEEDED", "PARTIALLY_SUCCEEDED", "FAILED", "CANCELLED"}


@dataclass
class Outcome:
    case: Case
    object_name: str
    job_id: str
    events: list[dict]
    job: dict
    deliveries: list[dict]
    staging_leftovers: list[str]
    rows: list[dict]  # every row of its embeddings files
    problems: list[dict] | None  # every line of its input-errors.jsonl (None: named, but not written)

    def vectors(self) -> dict[str, np.ndarray]:
        return {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in self.rows}


@dataclass
class CorpusRun:
    outcomes: dict[str, Outcome]
    output_before: dict[str, int]
    output_after: dict[str, int]
    input_after: dict[str, int]
    uploaded: set[str]


@pytest.fixture(scope="module")
def corpus(stack) -> CorpusRun:
    """Upload every case at once, await every job's event, and record what the stack did."""
    stack.reset()
    env = stack.env
    cases = all_cases(env["INPUT_PREFIX"], int(env["MAX_DECOMPRESSED_BYTES"]))
    subscription = EventSubscription(env["GOOGLE_CLOUD_PROJECT"], env["EVENTS_TOPIC"])
    try:
        output_before = bucket_objects(env, "OUTPUT_BUCKET")
        bucket = storage.Client().bucket(env["INPUT_BUCKET"])
        jobs: dict[str, tuple[Case, str, str]] = {}
        for case in cases:
            blob = bucket.blob(env["INPUT_PREFIX"] + case.name)
            blob.metadata = case.metadata or None
            blob.upload_from_string(case.data, content_type=case.content_type)
            jobs[case.key] = (case, blob.name, job_id_for(bucket.name, blob.name, blob.generation))
        received = await_events(subscription, [job_id for _, _, job_id in jobs.values()], RUN_TIMEOUT)
        outcomes = {}
        for key, (case, name, job_id) in jobs.items():
            job = job_doc(env, job_id)
            events = received[job_id]
            outcomes[key] = Outcome(case, name, job_id, events, job, deliveries_of(stack, name),
                                    staging_left(env, job) if job else [],
                                    output_rows(events[0]) if events else [], problems_of(job))
        return CorpusRun(outcomes, output_before, bucket_objects(env, "OUTPUT_BUCKET"),
                         bucket_objects(env, "INPUT_BUCKET"), {name for _, name, _ in jobs.values()})
    finally:
        subscription.close()


def problems_of(job: dict) -> list[dict] | None:
    """Every line of the job's `input-errors.jsonl`; None when the job names one that does not exist."""
    uri = (job.get("input_problems") or {}).get("uri")
    if not uri:
        return []
    try:
        return [json.loads(line) for line in read_gs(uri).splitlines()]
    except NotFound:
        return None


@pytest.mark.parametrize("key", CASE_KEYS)
def test_hostile_file(corpus: CorpusRun, key: str) -> None:
    outcome = corpus.outcomes[key]
    case, job = outcome.case, outcome.job
    assert job, f"no job for {outcome.object_name!r}: the finalize event never reached submit ({outcome.deliveries})"
    assert len(outcome.events) == 1, f"{len(outcome.events)} completion events (state {job.get('state')})"
    [event] = outcome.events
    assert job["state"] in TERMINAL and event["status"] == job["state"] == case.status, (
        job["state"], event["status"], job.get("error"))

    # What was wrong, said clearly.
    summary = job["input_problems"]
    problems = outcome.problems if outcome.problems is not None else summary["sample"]  # checked at the end
    assert event.get("input_errors") == summary.get("uri"), "the event names input-errors.jsonl when there are problems"
    assert event["counts"]["input_problems"] == summary["count"] == len(problems), "one line per problem"
    assert summary["sample"] == problems[: len(summary["sample"])], "the sample is the first problems"
    assert bool(summary.get("uri")) == bool(problems)
    if case.error_code:
        assert job["error"]["code"] == event["error"]["code"] == case.error_code, job["error"]
        assert job["error"]["message"] == event["error"]["message"]
    else:
        assert "error" not in event, event.get("error")
    texts = [job["error"]["message"]] if job.get("error") else []
    texts += [p["message"] for p in problems[:1000]]
    for needle in case.messages:
        assert any(needle in text for text in texts), f"{needle!r} in none of {texts[:5]}"
    if case.problems:
        assert {p.get("line"): p["code"] for p in problems} == case.problems
        assert len(problems) == len(case.problems), "one problem per bad record"
    if case.problem_count is not None:
        assert len(problems) == case.problem_count
        assert {p["code"] for p in problems} == {"DUPLICATE_ID"}
        lines = [p["line"] for p in problems]
        assert len(set(lines)) == len(lines), "each duplicate reported once"

    # Every good record embedded, once.
    rows = outcome.rows
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "an id was embedded twice"
    assert event["counts"]["succeeded"] == len(ids) == event["counts"]["total"] - event["counts"]["failed"]
    if case.ids is not None:
        assert set(ids) == set(case.ids)
    if case.echoes is not None:
        assert {row["id"]: row["echo"] for row in rows} == case.echoes, "a text was decoded wrong"
    if case.document is not None:
        check_passages_cover(outcome, rows, case)
    if case.same_vectors_as:
        reference = corpus.outcomes[case.same_vectors_as].vectors()
        for rid, vector in outcome.vectors().items():
            assert float(vector @ reference[rid]) > 0.9999, f"{rid}: decoded differently from the UTF-8 file"
    if case.status == "FAILED":
        assert "output" not in event and not ids

    # No crash loop, nothing left behind.
    assert outcome.deliveries, "the relay never delivered the finalize event"
    # A retry is fine (the poller's reconciliation of unsubmitted inputs may hold the job's lease when the
    # event comes); a timeout or a dead letter is not, and the last delivery is acknowledged.
    assert outcome.deliveries[-1]["outcome"] == "ack", outcome.deliveries
    assert {d["outcome"] for d in outcome.deliveries} <= {"ack", "nack"}, outcome.deliveries
    assert not outcome.staging_leftovers, outcome.staging_leftovers
    assert outcome.problems is not None, f"the job and its event name {summary['uri']}, which was never written"


def check_passages_cover(outcome: Outcome, rows: list[dict], case: Case) -> None:
    """The passages are `{name}#0..n-1` and cover every non-space character of the good text."""
    text = case.document
    passages = sorted(rows, key=lambda row: row["passage"])
    assert [row["id"] for row in passages] == [f"{outcome.object_name}#{i}" for i in range(len(passages))]
    assert passages, "no passage embedded"
    assert not text[: passages[0]["char_start"]].strip(), "text before the first passage was dropped"
    assert passages[-1]["char_end"] == len(text.rstrip()), "the passages stop before the end of the good text"
    for before, after in zip(passages, passages[1:], strict=False):
        assert after["char_start"] <= before["char_end"] or not text[before["char_end"]:after["char_start"]].strip(), (
            f"text between passages {before['passage']} and {after['passage']} was dropped")
        if case.contiguous:
            assert after["char_start"] == before["char_end"]


def test_every_output_lands_under_its_own_jobs_prefixes(corpus: CorpusRun, stack) -> None:
    assert not corpus.output_before, "the output bucket was not empty before the corpus ran"
    jobs = {key: o.job for key, o in corpus.outcomes.items() if o.job}
    assert len(jobs) == len(corpus.outcomes)
    check_output_layout(stack.env, jobs, {key: o.events for key, o in corpus.outcomes.items()}, corpus.output_after)


def test_nothing_is_written_to_the_input_bucket(corpus: CorpusRun) -> None:
    assert set(corpus.input_after) == corpus.uploaded


def test_the_reference_vectors_are_real_unit_vectors(corpus: CorpusRun) -> None:
    """The comparisons of encodings above mean something only if the vectors differ between texts."""
    vectors = corpus.outcomes["utf8-reference"].vectors()
    matrix = np.stack([vectors[f"doc-{i}"] for i in range(len(vectors))])
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    similarity = matrix @ matrix.T
    assert (similarity[~np.eye(len(matrix), dtype=bool)] < 0.99).all()


# -- names beyond ASCII ----------------------------------------------------------------------------------


def test_non_ascii_object_names_are_embedded_under_their_own_prefixes(clean_stack, events) -> None:
    """Multi-byte names, and a 1,000-byte one cut inside a character by the output path's length cap.

    Their finalize events are also POSTed to submit directly (as Eventarc would, headers percent-encoded),
    on top of the relay's delivery: a redelivery changes nothing."""
    env = clean_stack.env
    bucket = storage.Client().bucket(env["INPUT_BUCKET"])
    cases = unicode_name_cases(env["INPUT_PREFIX"])
    try:
        jobs = {}
        for number, case in enumerate(cases):
            blob = bucket.blob(env["INPUT_PREFIX"] + case.name)
            blob.upload_from_string(case.data, content_type=case.content_type)
            # 500 = "busy, retry": the relay's own delivery of the same event may hold the job right now.
            assert deliver_finalize(env, blob, f"unicode-{number}") in (200, 204, 500)
            jobs[case.key] = (case, blob.name, job_id_for(bucket.name, blob.name, blob.generation))
        received = await_events(events, [job_id for _, _, job_id in jobs.values()], 120)
        docs = {}
        for key, (case, name, job_id) in jobs.items():
            assert len(received[job_id]) == 1, f"{key}: {len(received[job_id])} events"
            [event] = received[job_id]
            assert event["status"] == "SUCCEEDED" and event["source"]["name"] == name
            assert {row["id"] for row in output_rows(event)} == case.ids
            docs[key] = job_doc(env, job_id)
            assert not staging_left(env, docs[key])
        check_output_layout(env, docs, {k: received[j] for k, (_, _, j) in jobs.items()},
                            bucket_objects(env, "OUTPUT_BUCKET"))
    finally:
        clean_stack.reset()  # ends the relay's redeliveries of these objects' notifications


def test_the_relay_delivers_the_finalize_event_of_a_non_ascii_name(clean_stack) -> None:
    env = clean_stack.env
    log = Path(clean_stack.parts["relay"].log)
    start = log.stat().st_size
    blob = storage.Client().bucket(env["INPUT_BUCKET"]).blob(env["INPUT_PREFIX"] + "hostile/names/café.jsonl")
    blob.upload_from_string(jsonl([record("doc-0", "un café noir")]), content_type="application/jsonl")
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)

    def relay_failed() -> bool:
        with log.open("rb") as text:
            text.seek(start)
            return b"relay error" in text.read()

    try:
        wait_until(lambda: bool(job_doc(env, job_id)) or relay_failed(), 60, 0.2, "the job, or the relay's error")
        assert job_doc(env, job_id), "the finalize event of café.jsonl never reached submit"
    finally:
        clean_stack.reset()
