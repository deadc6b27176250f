"""The walking skeleton, through every real part: a file lands in the input bucket (google-cloud-storage)
-> fake-gcs-server's notification -> the relay's CloudEvent -> submit -> Firestore job -> Gemini emulator
batch -> scheduler tick -> poller -> complete -> embeddings in GCS -> the completion event (google-cloud-pubsub).
"""

from __future__ import annotations

import numpy as np
import pytest
from google.cloud import firestore

from shared.domain.jobs import job_id_for
from tests.integration.pipeline_helpers import jsonl_records, read_gs, read_vectors, upload

pytestmark = pytest.mark.integration

TEXTS = [
    "The cat sat on the mat.",
    "A kitten was sitting on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "Stock markets rallied after the earnings report.",
    "How do I reset my password?",
]


def test_a_landed_file_ends_as_unit_vectors_and_one_event(clean_stack, events):
    env = clean_stack.env
    blob = upload(env, "skeleton/docs.jsonl", jsonl_records(TEXTS), metadata={"dimensions": "256"})
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)

    event = events.event_for(job_id)

    assert event["status"] == "SUCCEEDED"
    assert event["counts"] == {"total": 5, "succeeded": 5, "failed": 0, "input_problems": 0, "reused": 0}
    assert event["source"] == {"bucket": env["INPUT_BUCKET"], "name": blob.name, "generation": str(blob.generation)}
    assert event["dimensions"] == 256 and event["model"] == "gemini-embedding-001"
    vectors = read_vectors(event)
    assert sorted(vectors) == [f"doc-{i}" for i in range(5)]
    for vector in vectors.values():
        assert vector.shape == (256,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    similar = float(vectors["doc-0"] @ vectors["doc-1"])
    unrelated = float(vectors["doc-0"] @ vectors["doc-2"])
    assert similar > unrelated, "the emulator's real model keeps similar texts closer"
    manifest = read_gs(event["output"]["manifest"])
    assert b'"status": "SUCCEEDED"' in manifest
    job = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]).collection("embedding_jobs").document(job_id).get()
    assert job.to_dict()["state"] == "SUCCEEDED" and job.to_dict()["event_published_at"] is not None
    assert len(events.drain(3)) == 1, "one event per job"


def test_a_new_generation_pays_only_for_what_changed(clean_stack, events):
    """Through the real cache (the Firestore emulator): the second generation sends its edited and new
    passages only; unchanged ones come back byte-identical; the event says what changed."""
    env = clean_stack.env
    texts = [f"note {i}: {TEXTS[i % len(TEXTS)]} and a detail numbered {i}" for i in range(20)]
    first = upload(env, "reuse/notes.jsonl", jsonl_records(texts))
    before = events.event_for(job_id_for(env["INPUT_BUCKET"], first.name, first.generation))
    assert before["reuse"]["embedded"] == 20 and before["changes"]["added"] == 20
    edited = texts[:19]  # doc-19 removed
    edited[3], edited[7] = "an edited note", "another edited note"
    second = upload(env, "reuse/notes.jsonl", jsonl_records(edited + ["a brand new note"], prefix="doc")
                    .replace(b'"doc-19"', b'"new-1"'))
    after = events.event_for(job_id_for(env["INPUT_BUCKET"], second.name, second.generation))
    assert after["status"] == "SUCCEEDED" and after["counts"]["reused"] == 17
    assert after["reuse"]["embedded"] == 3 and after["reuse"]["saved_usd"] > 0
    changes = after["changes"]
    assert (changes["added"], changes["changed"], changes["removed"], changes["unchanged"]) == (1, 2, 1, 17)
    assert changes["previous_manifest"] == before["output"]["manifest"]

    def lines(event: dict) -> dict[str, bytes]:
        rows = {}
        for uri in event["output"]["embeddings"]:
            for line in read_gs(uri).splitlines():
                rows[line.split(b'"', 4)[3].decode()] = line.split(b'"embedding":', 1)[1]
        return rows

    old, new = lines(before), lines(after)
    unchanged = [f"doc-{i}" for i in range(19) if i not in (3, 7)]
    assert all(new[i] == old[i] for i in unchanged), "a reused vector is the stored one, byte for byte"
