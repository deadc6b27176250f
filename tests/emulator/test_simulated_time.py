"""Simulated time for scheduling benchmarks (batches side by side, a RUNNING cap), the hash encoder, item
token counts, the vector cache's admin call, and configuration from the environment."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

genai = pytest.importorskip("google.genai")
from google.genai import types  # noqa: E402

from infra.local.gemini_emulator.embedder import Embedder  # noqa: E402
from infra.local.gemini_emulator.encoder import HashEncoder  # noqa: E402
from infra.local.gemini_emulator.engine import Engine  # noqa: E402
from infra.local.gemini_emulator.faults import Faults  # noqa: E402
from infra.local.gemini_emulator.schema import EmbedItem, InlineRequest  # noqa: E402
from infra.local.gemini_emulator.store import Batch, State, Store  # noqa: E402
from infra.local.gemini_emulator.tokens import RegexCounter  # noqa: E402
from infra.local.gemini_emulator.wire import new_id  # noqa: E402
from tests.emulator.conftest import STACK_QUOTAS  # noqa: E402
from tests.emulator.emulator_helpers import (  # noqa: E402
    API_KEY,
    MODEL,
    FakeEncoder,
    create,
    inline_body,
    upload,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.filterwarnings("ignore:batches.create_embeddings")


class CountingEncoder(FakeEncoder):
    """A FakeEncoder that records how many encode calls ever ran at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.running = self.most_at_once = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.002)  # a model batch takes time: gives overlapping calls a chance to show
            return super().encode(texts)
        finally:
            with self._lock:
                self.running -= 1


def engine_rig(
    tmp_path: Path, workers: int = 1, max_running: int = 0
) -> tuple[Engine, Store, CountingEncoder, Faults]:
    encoder, store, faults = CountingEncoder(), Store(tmp_path), Faults()
    engine = Engine(
        store,
        Embedder(lambda: encoder, 0),
        faults,
        workers=workers,
        model_batch_size=4,
        max_running=max_running,
    )
    return engine, store, encoder, faults


def queue(store: Store, texts: list[str]) -> Batch:
    requests = [InlineRequest({"key": str(i)}, EmbedItem(t, 3072)) for i, t in enumerate(texts)]
    batch = Batch(
        id=new_id(36),
        model="models/gemini-embedding-001",
        display_name="t",
        priority=0,
        seq=store.next_seq(),
        fate=Faults().batch_fate(),
        not_before=0.0,
        inline=requests,
        request_count=len(texts),
    )
    store.add_batch(batch)
    return batch


def test_in_simulated_time_batches_run_side_by_side_and_the_model_stays_bounded(tmp_path):
    engine, store, encoder, faults = engine_rig(tmp_path, workers=1)
    faults.replace({"seconds_per_item": 0.02})  # 40 items: 0.8 s of simulated time per batch
    engine.start()
    try:
        batches = [queue(store, [f"batch {j} text {i}" for i in range(40)]) for j in range(8)]
        wait_for(lambda: store.running_count() == 8, 10, "all 8 batches RUNNING at once (1 worker)")
        wait_for(lambda: all(b.state == State.SUCCEEDED for b in batches), 30, "all batches to succeed")
        assert all(b.succeeded == 40 for b in batches)
        assert encoder.most_at_once == 1  # model work still goes one model batch at a time
    finally:
        engine.stop()


def test_max_running_caps_the_batches_in_flight(tmp_path):
    engine, store, _, faults = engine_rig(tmp_path, workers=2, max_running=3)
    faults.replace({"seconds_per_item": 0.01})
    engine.start()
    try:
        batches = [queue(store, [f"b{j} t{i}" for i in range(30)]) for j in range(7)]
        seen: list[int] = []

        def finished() -> bool:
            seen.append(store.running_count())
            return all(b.state == State.SUCCEEDED for b in batches)

        wait_for(finished, 30, "all batches to succeed", interval=0.01)
        assert max(seen) == 3
    finally:
        engine.stop()


def test_the_hash_encoder_is_deterministic_unit_norm_and_truncates_like_the_real_model():
    first, second = HashEncoder(), HashEncoder()
    texts = ["same text", "another text", "same text"]
    vectors = first.encode(texts)
    np.testing.assert_array_equal(vectors, second.encode(texts))
    assert vectors.shape == (3, 3072) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert abs(float(vectors[0] @ vectors[1])) < 0.1  # unrelated texts: near-orthogonal

    embedder = Embedder(HashEncoder, cache_entries=100)
    full, short = embedder.embed(["a text"])[0], embedder.embed(["a text"], 768)[0]
    np.testing.assert_array_equal(short, full[:768])  # the first d values, not renormalised
    assert np.linalg.norm(short) < 0.9
    assert embedder.cache_size == 0  # cheaper to draw again than to keep


# -- over HTTP ----------------------------------------------------------------------------------------------
def test_the_configured_emulator_reads_its_settings_from_the_environment(configured_api, configured):
    health = configured.admin("GET", "health").json()
    assert (health["model"], health["encoderDimensions"]) == ("hash-3072", 3072)
    assert configured.admin("GET", "quotas").json() == STACK_QUOTAS
    configured.admin("PUT", "quotas", json={}).raise_for_status()
    configured.admin("POST", "reset").raise_for_status()
    assert configured.admin("GET", "quotas").json() == STACK_QUOTAS  # reset restores the start configuration
    assert configured.stats()["tokenCounter"] == "regex-words"


def test_hash_vectors_over_http(configured_api):
    url = f"/v1beta/models/{MODEL}:embedContent"
    full = configured_api.post(url, json={"content": {"parts": [{"text": "x y"}]}}).json()["embedding"][
        "values"
    ]
    short = configured_api.post(
        url, json={"content": {"parts": [{"text": "x y"}]}, "outputDimensionality": 768}
    ).json()["embedding"]["values"]
    assert len(full) == 3072 and abs(np.linalg.norm(full) - 1.0) < 1e-5
    np.testing.assert_allclose(short, full[:768], atol=1e-7)


def test_simulated_time_over_http_runs_every_batch_at_once(configured_api, configured):
    configured.set_faults({"seconds_per_item": 0.02})
    names = [
        create(configured_api, inline_body([f"b{j} t{i}" for i in range(100)]))["name"] for j in range(6)
    ]

    def running() -> int:
        ops = configured_api.get("/v1beta/batches", params={"fields": "operations.metadata.state"}).json()
        return sum(op["metadata"]["state"] == "BATCH_STATE_RUNNING" for op in ops.get("operations", []))

    wait_for(lambda: running() == 6, 15, "6 batches RUNNING side by side (2 workers)")
    configured.admin("DELETE", "faults")
    for name in names:
        assert wait_state(configured_api, name)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"


def test_item_token_counts_when_told_to(configured_api, configured):
    texts = ["Embeddings, tokenised!", "hello world", ""]
    counts = RegexCounter().count(texts)
    assert counts == [4, 2, 0]
    op = wait_state(configured_api, create(configured_api, inline_body(texts))["name"])
    entries = {
        e["metadata"]["key"]: e for e in op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    }
    assert entries["0"]["response"]["tokenCount"] == "4" and entries["1"]["response"]["tokenCount"] == "2"
    assert "error" in entries["2"]  # an empty item fails; no count

    lines = [
        json.dumps({"key": f"k{i}", "request": {"content": {"parts": [{"text": t}]}}})
        for i, t in enumerate(texts[:2])
    ]
    source = upload(configured_api, ("\n".join(lines) + "\n").encode())
    done = wait_state(
        configured_api,
        create(configured_api, {"batch": {"displayName": "f", "inputConfig": {"fileName": source["name"]}}})[
            "name"
        ],
    )
    out = configured_api.get(
        f"/v1beta/{done['metadata']['output']['responsesFile']}:download", params={"alt": "media"}
    )
    by_key = {line["key"]: line for line in map(json.loads, out.text.splitlines())}
    assert (
        by_key["k0"]["response"]["tokenCount"] == "4"
        and len(by_key["k1"]["response"]["embedding"]["values"]) == 3072
    )

    client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=configured.base_url))
    job = client.batches.get(name=op["name"])
    tokens = sorted(r.response.token_count for r in job.dest.inlined_embed_content_responses if r.response)
    assert tokens == [2, 4]  # google-genai reads the field (SingleEmbedContentResponse.token_count)


def test_the_default_emulator_reports_no_token_counts_and_can_drop_its_cache(api, emulator):
    op = wait_state(api, create(api, inline_body(["hello world"]))["name"])
    response = op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"][0]["response"]
    assert set(response) == {"embedding"}
    assert emulator.stats()["cacheEntries"] >= 1
    assert emulator.admin("DELETE", "cache").json()["cleared"] >= 1
    assert emulator.stats()["cacheEntries"] == 0
