"""The running emulator over HTTP: auth, error shape, interactive embeddings, limits, admin routes."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.emulator.emulator_helpers import API_KEY, MODEL, inline_body, start_emulator

EMBED = f"/v1beta/models/{MODEL}:embedContent"
BATCH_EMBED = f"/v1beta/models/{MODEL}:batchEmbedContents"


def content(text: str) -> dict:
    return {"parts": [{"text": text}]}


def assert_error(response: httpx.Response, code: int, status: str, message: str = "") -> dict:
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert message in error["message"]
    return error


# -- auth ---------------------------------------------------------------------------------------------
def test_a_missing_key_is_403_permission_denied(api, emulator):
    response = httpx.get(f"{emulator.base_url}/v1beta/batches", trust_env=False)
    assert_error(response, 403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers")


def test_a_wrong_key_is_400_api_key_invalid(api):
    error = assert_error(
        api.get("/v1beta/batches", headers={"x-goog-api-key": "not-the-key"}),
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
    )
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


def test_the_key_may_come_as_a_query_parameter_and_is_never_logged(api, emulator):
    response = httpx.get(f"{emulator.base_url}/v1beta/batches", params={"key": API_KEY}, trust_env=False)
    assert response.status_code == 200 and response.json() == {}
    log = emulator.process.log_path.read_text()
    assert "GET /v1beta/batches -> 200" in log
    assert API_KEY not in log


def test_admin_routes_need_no_key(api, emulator):
    health = httpx.get(f"{emulator.base_url}/_emulator/health", trust_env=False).json()
    assert health["status"] == "ok" and health["ready"] is True
    assert health["model"] == "all-MiniLM-L6-v2-onnx-int8" and health["encoderDimensions"] == 384
    assert emulator.admin("GET", "stats").status_code == 200


def test_without_a_configured_key_any_non_empty_key_is_accepted_and_defaults_can_be_written():
    other = start_emulator(
        "gemini-emulator-anykey",
        {
            "GEMINI_EMULATOR_PRELOAD": "0",
            "GEMINI_EMULATOR_EMIT_DEFAULTS": "1",
            "GEMINI_EMULATOR_FAULTS": '{"hold_queue": true}',
        },
        wait_model=False,
    )
    try:
        url = f"{other.base_url}/v1beta/batches"
        assert httpx.get(url, headers={"x-goog-api-key": "whatever"}, trust_env=False).status_code == 200
        assert httpx.get(url, params={"key": "k"}, trust_env=False).status_code == 200
        assert_error(httpx.get(url, trust_env=False), 403, "PERMISSION_DENIED")
        health = httpx.get(f"{other.base_url}/_emulator/health", trust_env=False).json()
        assert health["ready"] is False  # GEMINI_EMULATOR_PRELOAD=0: loads on first use
        created = httpx.post(
            f"{other.base_url}/v1/models/{MODEL}:asyncBatchEmbedContent",
            json=inline_body(["x"]),
            headers={"x-goog-api-key": "k"},
            trust_env=False,
        ).json()
        assert created["done"] is False and created["metadata"]["priority"] == "0"
        assert created["metadata"]["batchStats"] == {
            "requestCount": "1",
            "successfulRequestCount": "0",
            "failedRequestCount": "0",
            "pendingRequestCount": "1",
        }
    finally:
        other.process.stop()


# -- error shape ----------------------------------------------------------------------------------------
def test_unknown_routes_methods_and_versions_are_google_shaped_404s(api):
    assert_error(api.get("/v1beta/nothing/here"), 404, "NOT_FOUND")
    assert_error(api.get("/v2/batches"), 404, "NOT_FOUND")
    assert_error(api.post(f"/v1beta/models/{MODEL}:generateContent", json={}), 404, "NOT_FOUND")
    assert_error(api.put("/v1beta/batches/x"), 404, "NOT_FOUND")


def test_malformed_json_is_400(api):
    response = api.post(EMBED, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400, "INVALID_ARGUMENT", "Invalid JSON payload received")


# -- interactive embeddings -------------------------------------------------------------------------------
def test_embed_content_returns_3072_unit_values_by_default(api):
    values = np.array(api.post(EMBED, json={"content": content("hello world")}).json()["embedding"]["values"])
    assert values.shape == (3072,)
    assert np.linalg.norm(values) == pytest.approx(1.0, abs=1e-5)


def test_shorter_outputs_are_the_prefix_and_not_renormalised(api):
    full = np.array(api.post(EMBED, json={"content": content("the prefix")}).json()["embedding"]["values"])
    for dims in (128, 768, 1536):
        body = {"content": content("the prefix"), "output_dimensionality": dims}  # snake_case accepted
        short = np.array(api.post(EMBED, json=body).json()["embedding"]["values"])
        assert short.shape == (dims,)
        np.testing.assert_allclose(short, full[:dims], atol=1e-7)
        assert np.linalg.norm(short) < 0.999


def test_same_text_same_vector_and_similar_texts_are_closer(api):
    def embed(text: str) -> np.ndarray:
        body = {"content": content(text), "outputDimensionality": 768, "taskType": "SEMANTIC_SIMILARITY"}
        vector = np.array(api.post(EMBED, json=body).json()["embedding"]["values"])
        return vector / np.linalg.norm(vector)

    a, b, c = (
        embed("How do I reset my password?"),
        embed("I forgot my password, how can I change it?"),
        embed("Bake for 30 minutes."),
    )
    np.testing.assert_array_equal(a, embed("How do I reset my password?"))
    assert a @ b > a @ c + 0.3


def test_batch_embed_contents_keeps_the_request_order(api):
    texts = ["one", "two", "three is longer than the others"]
    body = {
        "requests": [
            {"model": f"models/{MODEL}", "content": content(t), "outputDimensionality": 256} for t in texts
        ]
    }
    embeddings = api.post(BATCH_EMBED, json=body).json()["embeddings"]
    assert len(embeddings) == 3
    for text, embedding in zip(texts, embeddings, strict=True):
        single = api.post(EMBED, json={"content": content(text), "outputDimensionality": 256}).json()
        np.testing.assert_allclose(embedding["values"], single["embedding"]["values"], atol=1e-7)


def test_batch_embed_contents_takes_at_most_100(api):
    hundred = {"requests": [{"content": content(f"t{i}")} for i in range(100)]}
    assert len(api.post(BATCH_EMBED, json=hundred).json()["embeddings"]) == 100
    hundred["requests"].append({"content": content("one too many")})
    assert_error(api.post(BATCH_EMBED, json=hundred), 400, "INVALID_ARGUMENT", "at most 100")
    assert_error(api.post(BATCH_EMBED, json={"requests": []}), 400, "INVALID_ARGUMENT", "at least one")


def test_empty_content_is_400_for_interactive_calls(api):
    assert_error(
        api.post(EMBED, json={"content": content("  ")}), 400, "INVALID_ARGUMENT", "content is empty"
    )
    body = {"requests": [{"content": content("fine")}, {"content": {"parts": []}}]}
    assert_error(api.post(BATCH_EMBED, json=body), 400, "INVALID_ARGUMENT", "requests[1]")


def test_a_request_for_another_model_is_400(api):
    body = {"requests": [{"model": "models/text-embedding-004", "content": content("x")}]}
    assert_error(api.post(BATCH_EMBED, json=body), 400, "INVALID_ARGUMENT", "does not match")


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-2.0-flash-lite", "gemma-3-4b-it"])
def test_generative_models_are_not_embedding_models(api, model):
    response = api.post(f"/v1beta/models/{model}:embedContent", json={"content": content("x")})
    assert_error(response, 404, "NOT_FOUND", "is not supported for embedContent")
    response = api.post(f"/v1beta/models/{model}:asyncBatchEmbedContent", json=inline_body(["x"]))
    assert_error(response, 404, "NOT_FOUND", "asyncBatchEmbedContent")


def test_any_embedding_model_name_and_v1_work(api):
    for path in ("/v1/models/text-embedding-004:embedContent", "/v1beta/models/my-embedder:embedContent"):
        assert len(api.post(path, json={"content": content("x")}).json()["embedding"]["values"]) == 3072
    info = api.get(f"/v1beta/models/{MODEL}").json()
    assert info["inputTokenLimit"] == 2048 and "asyncBatchEmbedContent" in info["supportedGenerationMethods"]


def test_inputs_past_the_token_limit_are_truncated_silently(api):
    long_text = "lorem ipsum dolor sit amet " * 2000  # ~10,000 word pieces
    response = api.post(EMBED, json={"content": content(long_text), "outputDimensionality": 128})
    assert response.status_code == 200 and len(response.json()["embedding"]["values"]) == 128


# -- limits ---------------------------------------------------------------------------------------------
def test_a_request_over_20_mb_is_refused(api):
    text = "x" * (21 * 1024 * 1024)
    response = api.post(f"/v1beta/models/{MODEL}:asyncBatchEmbedContent", json=inline_body([text]))
    assert_error(response, 400, "INVALID_ARGUMENT", "Request payload size exceeds the limit: 20971520 bytes.")
    assert api.get("/v1beta/batches").json() == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["batch"].pop("displayName"), "display_name is required"),
        (
            lambda b: b["batch"]["inputConfig"]["requests"]["requests"][0]["request"].update(
                outputDimensionality=64
            ),
            "between 128 and 3072",
        ),
        (
            lambda b: b["batch"]["inputConfig"]["requests"]["requests"][0]["request"].update(
                outputDimensionality=4096
            ),
            "between 128 and 3072",
        ),
        (
            lambda b: b["batch"]["inputConfig"]["requests"]["requests"][0]["request"].update(
                taskType="RANKING"
            ),
            "TaskType",
        ),
        (lambda b: b["batch"].update(inputConfig={"fileName": "files/doesnotexist"}), "does not exist"),
        (lambda b: b["batch"].update(priority="urgent"), "TYPE_INT64"),
    ],
)
def test_structural_problems_in_create_are_400(api, change, message):
    body = inline_body(["a", "b"])
    change(body)
    response = api.post(f"/v1beta/models/{MODEL}:asyncBatchEmbedContent", json=body)
    assert_error(response, 400, "INVALID_ARGUMENT", message)


# -- faults over HTTP -------------------------------------------------------------------------------------
def test_the_fault_header_applies_to_one_request(api):
    response = api.get("/v1beta/batches", headers={"X-Emulator-Fault": "429;retry-after=2"})
    assert_error(response, 429, "RESOURCE_EXHAUSTED")
    assert response.headers["retry-after"] == "2"
    assert_error(api.get("/v1beta/batches", headers={"X-Emulator-Fault": "503"}), 503, "UNAVAILABLE")
    assert api.get("/v1beta/batches").status_code == 200


def test_create_429_then_success(api, emulator):
    emulator.set_faults({"create_429": {"count": 2, "retry_after_seconds": 3}})
    path = f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"
    for _ in range(2):
        response = api.post(path, json=inline_body(["a"]))
        assert_error(response, 429, "RESOURCE_EXHAUSTED")
        assert response.headers["retry-after"] == "3"
    assert api.get("/v1beta/batches").status_code == 200  # not a create: untouched
    assert api.post(path, json=inline_body(["a"])).status_code == 200
    assert emulator.admin("GET", "faults").json()["create_429"]["count"] == 0


def test_http_5xx_hits_only_matching_paths(api, emulator):
    emulator.set_faults({"http_5xx": {"count": 2, "status": 500, "path_contains": "batches"}})
    assert api.post(EMBED, json={"content": content("x"), "outputDimensionality": 128}).status_code == 200
    assert_error(api.get("/v1beta/batches"), 500, "INTERNAL")
    assert_error(api.get("/v1beta/batches"), 500, "INTERNAL")
    assert api.get("/v1beta/batches").status_code == 200


def test_bad_fault_plans_are_400_and_keep_the_old_plan(api, emulator):
    emulator.set_faults({"pending_seconds": 5})
    response = emulator.admin("PUT", "faults", json={"create_429": {"count": "x"}})
    assert response.status_code == 400 and "create_429.count" in response.json()["error"]["message"]
    assert emulator.admin("GET", "faults").json() == {"pending_seconds": 5.0}
    emulator.admin("DELETE", "faults")
    assert emulator.admin("GET", "faults").json() == {}


def test_stats_count_calls_per_endpoint_and_reset_clears_them(api, emulator):
    api.post(EMBED, json={"content": content("x"), "outputDimensionality": 128})
    api.get("/v1beta/batches")
    api.get("/v1beta/batches")
    api.get("/v1beta/batches/nope")
    stats = emulator.stats()
    assert stats["calls"] == {"embeds": 1, "lists": 2, "gets": 1} and stats["total"] == 4
    emulator.admin("POST", "reset")
    assert emulator.stats()["calls"] == {}
