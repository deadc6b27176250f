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
