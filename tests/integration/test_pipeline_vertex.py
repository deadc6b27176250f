"""The whole pipeline on Vertex AI batch prediction, chosen by a file's `provider` option (the suite's stack
enables both providers: PROVIDERS=vertex beside PROVIDER=gemini), on the same emulator: upload to
completion event, the same vectors as through the Gemini API, and a manifest that names the provider and
the token counts Vertex reports."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from shared.domain.jobs import job_id_for
from tests.integration.pipeline_helpers import jsonl_records, read_gs, read_vectors, upload

pytestmark = pytest.mark.integration


def test_a_file_that_asks_for_vertex_runs_there_end_to_end_with_the_same_vectors(stack, events):
    env = stack.env
    run = uuid.uuid4().hex[:8]
    texts = [f"{run}: passage {i} about {topic}" for i, topic in enumerate(["rivers", "chess", "tea", "trains"])]
    blobs = {provider: upload(env, f"providers/{run}/{provider}.jsonl", jsonl_records(texts),
                              metadata={"provider": provider})
             for provider in ("gemini", "vertex")}
    received = {provider: events.event_for(job_id_for(blob.bucket.name, blob.name, blob.generation), 240)
                for provider, blob in blobs.items()}
    for provider, event in received.items():
        assert event["status"] == "SUCCEEDED", (provider, event.get("error"))
        assert event["counts"]["succeeded"] == len(texts)
    manifest = json.loads(read_gs(received["vertex"]["output"]["manifest"]))
    assert manifest["provider"] == "vertex"
    assert all(shard["reported_tokens"] for shard in manifest["shards"]), manifest["shards"]
    gemini, vertex = read_vectors(received["gemini"]), read_vectors(received["vertex"])
    assert sorted(vertex) == sorted(gemini) == [f"doc-{i}" for i in range(len(texts))]
    for key, vector in vertex.items():
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
        assert float(vector @ gemini[key]) > 0.9999, key
