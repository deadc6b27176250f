"""The Vertex AI surface (v1 and v1beta1): batchPredictionJobs for the embedding models, and the models'
interactive embeddings. Mounted beside the Gemini API routes by app.py; the same embedder, token counter and
fault plan serve both.

    POST   /{v}/projects/P/locations/L/batchPredictionJobs              create (labels, gcsSource -> gcsDestination)
    GET    /{v}/projects/P/locations/L/batchPredictionJobs              list (filter, pageSize, pageToken)
    GET    /{v}/projects/P/locations/L/batchPredictionJobs/ID           get
    POST   /{v}/projects/P/locations/L/batchPredictionJobs/ID:cancel    cancel -> {}
    DELETE /{v}/projects/P/locations/L/batchPredictionJobs/ID           delete (ended jobs) -> a done operation
    GET    /{v}/projects/P/locations/L/operations/ID                    that operation
    POST   /{v}/projects/P/locations/L/publishers/google/models/M:predict | :embedContent | :batchEmbedContents
    GET    /_emulator/vertex                                            job states (no token)

Auth: `Authorization: Bearer <token>`; any token is accepted unless GEMINI_EMULATOR_VERTEX_TOKEN is set, then
exactly that one. Missing: 401 UNAUTHENTICATED; wrong: 401 too (Google's texts). Tokens are never logged.
Faults: every call goes through `Emulator.api` (X-Emulator-Fault, http_5xx; creates: create_429 and
lose_create_response), with endpoint names `vertex_creates`, `vertex_gets`, `vertex_lists`, `vertex_cancels`,
`vertex_deletes`, `vertex_embeds` in `/_emulator/stats`.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .emulator import Emulator
from .schema import EMPTY_CONTENT_MESSAGE, EmbedItem, parse_embed_request
from .vertex_gcs import split_gs_uri
from .vertex_jobs import BATCH_MODELS, TASK_IN_TEXT, VertexJobs, parse_filter
from .web import error_response, json_response, page_size, page_token, read_json
from .wire import ApiError, check_fields, field

__all__ = ["vertex_routes"]

log = logging.getLogger("gemini_emulator")

VERSIONS = frozenset({"v1", "v1beta1"})
_MISSING = ("Request is missing required authentication credential. Expected OAuth 2 access token, login cookie "
            "or other valid authentication credential.")
_INVALID = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
            "valid authentication credential.")
_JOB_FIELDS = {"displayName", "model", "inputConfig", "outputConfig", "labels", "modelParameters", "serviceAccount",
               "encryptionSpec", "instanceConfig", "dedicatedResources", "manualBatchTuningParameters",
               "generateExplanation", "explanationSpec", "disableContainerLogging", "name"}
_MODEL = re.compile(r"^(?:projects/[^/]+/locations/[^/]+/)?publishers/google/models/(?P<id>[A-Za-z0-9._-]+)$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_INSTANCES = 1  # gemini-embedding models take one instance per predict call


def vertex_routes(emu: Emulator, jobs: VertexJobs, token: str | None) -> list[Route]:
    async def api(request: Request, endpoint: str, handler: Callable[[], Awaitable[Response]],
                  create: bool = False) -> Response:
        try:
            _check_version(request)
            _check_bearer(request, token)
        except ApiError as exc:
            emu.stats.count(endpoint)
            return error_response(exc)
        return await emu.api(request, endpoint, handler, key=False, create=create)

    # -- jobs ----------------------------------------------------------------------------------------
    async def collection(request: Request) -> Response:
        project, location = request.path_params["project"], request.path_params["location"]

        async def create() -> Response:
            body = await read_json(request)
            model_id, spec = _job_spec(body, project, location)
            jobs.storage.require()
            return json_response(jobs.add(project, location, model_id, spec))

        async def listing() -> Response:
            accept = parse_filter(request.query_params.get("filter"))
            page, next_token = jobs.page(location, accept, page_size(request), page_token(request), emu.faults.list_order)
            with jobs.lock:
                body: dict[str, Any] = {"batchPredictionJobs": [job.resource() for job in page]} if page else {}
            if next_token:
                body["nextPageToken"] = next_token
            return json_response(body)

        if request.method == "POST":
            return await api(request, "vertex_creates", create, create=True)
        return await api(request, "vertex_lists", listing)

    async def member(request: Request) -> Response:
        location = request.path_params["location"]
        job_id, _, verb = request.path_params["job"].partition(":")

        async def get() -> Response:
            job = jobs.get(location, job_id)
            with jobs.lock:
                return json_response(job.resource())

        async def cancel() -> Response:
            jobs.cancel(location, job_id)
            return json_response({})

        async def delete() -> Response:
            return json_response(jobs.delete(location, job_id))

        if request.method == "GET" and not verb:
            return await api(request, "vertex_gets", get)
        if request.method == "POST" and verb == "cancel":
            return await api(request, "vertex_cancels", cancel)
        if request.method == "DELETE" and not verb:
            return await api(request, "vertex_deletes", delete)
        return await api(request, "other", _not_found)

    async def operation(request: Request) -> Response:
        async def get() -> Response:
            return json_response(jobs.operation(request.path_params["op"]))

        return await api(request, "vertex_gets", get)

    # -- interactive ---------------------------------------------------------------------------------
    async def model(request: Request) -> Response:
        location = request.path_params["location"]
        model_id, _, verb = request.path_params["model"].partition(":")

        async def handler() -> Response:
            _check_model(model_id, location, interactive=True)
            body = await read_json(request)
            if verb == "predict":
                return await predict(body, model_id)
            if verb == "embedContent":
                (vector,), (count,) = await _embed([_content_request(body, model_id, "")])
                return json_response({"embedding": {"values": vector},
                                      "usageMetadata": {"promptTokenCount": count, "totalTokenCount": count}})
            if verb == "batchEmbedContents":
                requests = check_fields(body, {"requests"}, "").get("requests")
                if not isinstance(requests, list) or not requests:
                    raise ApiError(400, "requests must hold at least one request.")
                vectors, _ = await _embed([_content_request(r, model_id, f"requests[{i}]") for i, r in enumerate(requests)])
                return json_response({"embeddings": [{"values": v} for v in vectors]})
            raise ApiError(404, "Method not found.")

        return await api(request, "vertex_embeds", handler)

    async def predict(body: Any, model_id: str) -> Response:
        body = check_fields(body, {"instances", "parameters"}, "")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise ApiError(400, "instances must hold at least one instance.")
        if len(instances) > MAX_INSTANCES:
            raise ApiError(400, f"{model_id} takes {MAX_INSTANCES} instance per request, got {len(instances)}.")
        parameters = check_fields(body.get("parameters") or {}, {"outputDimensionality", "autoTruncate"}, "parameters")
        items = []
        for i, instance in enumerate(instances):
            instance = check_fields(instance, {"content", "taskType", "title", "mimeType"}, f"instances[{i}]")
            gemini = {"content": {"parts": [{"text": instance.get("content")}]},
                      "outputDimensionality": field(parameters, "outputDimensionality")}
            if model_id not in TASK_IN_TEXT:
                gemini.update({k: v for k, v in (("taskType", field(instance, "taskType")),
                                                 ("title", instance.get("title"))) if v is not None})
            items.append(_checked(parse_embed_request(gemini, f"instances[{i}]", emu.settings.strict)))
        vectors, counts = await _embed(items)
        return json_response({"predictions": [
            {"embeddings": {"values": v, "statistics": {"token_count": c, "truncated": False}}}
            for v, c in zip(vectors, counts, strict=True)]})

    def _content_request(body: Any, model_id: str, where: str) -> EmbedItem:
        body = check_fields(body, {"content", "embedContentConfig", "model"}, where or "")
        config = check_fields(field(body, "embedContentConfig") or {},
                              {"taskType", "title", "outputDimensionality", "autoTruncate", "documentOcr",
                               "audioTrackExtraction"}, f"{where}.embed_content_config".lstrip("."))
        gemini: dict[str, Any] = {"content": body.get("content", {}),
                                  "outputDimensionality": field(config, "outputDimensionality")}
        if model_id not in TASK_IN_TEXT:
            gemini.update({k: v for k, v in (("taskType", field(config, "taskType")),
                                             ("title", config.get("title"))) if v is not None})
        return _checked(parse_embed_request(gemini, where or "request", emu.settings.strict))

    async def _embed(items: list[EmbedItem]) -> tuple[list[np.ndarray], list[int]]:
        def run() -> tuple[list[np.ndarray], list[int]]:
            out: list[np.ndarray] = [np.empty(0)] * len(items)
            for chunk, vectors in emu.embedder.embed_items(items, emu.settings.model_batch_size):
                for i, vector in zip(chunk, vectors, strict=True):
                    out[i] = vector
            return out, emu.tokens.count([item.counted_text for item in items])

        return await anyio.to_thread.run_sync(run)

    async def states(request: Request) -> Response:
        return json_response({"jobStates": jobs.states(), "storage": jobs.storage.host,
                              "tokenRequired": token is not None})

    prefix = "/{version}/projects/{project}/locations/{location}"
    return [
        Route(f"{prefix}/batchPredictionJobs", collection, methods=["GET", "POST"]),
        Route(f"{prefix}/batchPredictionJobs/{{job}}", member, methods=["GET", "POST", "DELETE"]),
        Route(f"{prefix}/operations/{{op}}", operation, methods=["GET"]),
        Route(f"{prefix}/publishers/google/models/{{model}}", model, methods=["POST"]),
        Route("/_emulator/vertex", states, methods=["GET"]),
    ]


async def _not_found() -> Response:
    raise ApiError(404, "Method not found.")


def _check_version(request: Request) -> None:
    if request.path_params.get("version") not in VERSIONS:
        raise ApiError(404, "Requested entity was not found.")


def _check_bearer(request: Request, expected: str | None) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, _MISSING, status="UNAUTHENTICATED")
    if expected is not None and not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, _INVALID, status="UNAUTHENTICATED")


def _checked(item: EmbedItem) -> EmbedItem:
    if item.empty:
        raise ApiError(400, EMPTY_CONTENT_MESSAGE)
    return item


def _check_model(model_id: str, location: str, interactive: bool = False) -> None:
    if model_id not in BATCH_MODELS:
        raise ApiError(400, f"The emulator serves the embedding models {sorted(BATCH_MODELS)} only, not {model_id!r}.")
    if location not in BATCH_MODELS[model_id] and not (interactive and location == "global"):
        raise ApiError(404, f"Publisher Model `projects/.../locations/{location}/publishers/google/models/{model_id}` "
                            "was not found or your project does not have access to it.")


def _job_spec(body: Any, project: str, location: str) -> tuple[str, dict[str, Any]]:
    """The create's body, validated and normalised to lowerCamelCase: (model id, job fields to keep)."""
    body = check_fields(body, _JOB_FIELDS, "batch_prediction_job")
    display_name = field(body, "displayName")
    if not isinstance(display_name, str) or not display_name.strip():
        raise ApiError(400, "batch_prediction_job.display_name is required.")
    if len(display_name) > 128:
        raise ApiError(400, "batch_prediction_job.display_name is longer than 128 characters.")
    model = body.get("model")
    match = _MODEL.match(model) if isinstance(model, str) else None
    if match is None:
        raise ApiError(400, f"batch_prediction_job.model must be publishers/google/models/MODEL, got {model!r}.")
    _check_model(match["id"], location)
    source = check_fields(field(body, "inputConfig") or {}, {"instancesFormat", "gcsSource", "bigquerySource"},
                          "batch_prediction_job.input_config")
    if field(source, "instancesFormat") != "jsonl" or field(source, "gcsSource") is None:
        raise ApiError(400, "input_config: Gemini embedding batches read JSONL from Cloud Storage "
                            "(instances_format jsonl, gcs_source).")
    uris = check_fields(field(source, "gcsSource"), {"uris"}, "input_config.gcs_source").get("uris")
    if not isinstance(uris, list) or not uris:
        raise ApiError(400, "input_config.gcs_source.uris must hold at least one gs:// URI.")
    for uri in uris:
        split_gs_uri(uri, "input_config.gcs_source.uris")
    sink = check_fields(field(body, "outputConfig") or {}, {"predictionsFormat", "gcsDestination", "bigqueryDestination"},
                        "batch_prediction_job.output_config")
    destination = check_fields(field(sink, "gcsDestination") or {}, {"outputUriPrefix"}, "output_config.gcs_destination")
    prefix = field(destination, "outputUriPrefix")
    if field(sink, "predictionsFormat") != "jsonl" or not prefix:
        raise ApiError(400, "output_config: Gemini embedding batches write JSONL to Cloud Storage "
                            "(predictions_format jsonl, gcs_destination.output_uri_prefix).")
    split_gs_uri(prefix, "output_config.gcs_destination.output_uri_prefix")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or len(labels) > 64:
        raise ApiError(400, "labels must be a map of at most 64 entries.")
    for key, value in labels.items():
        if not _LABEL_KEY.match(str(key)) or not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ApiError(400, f"Invalid label {key}={value!r}: keys and values may only contain lowercase letters, "
                                "numeric characters, underscores and dashes, at most 63 characters (keys start "
                                "with a letter).")
    spec = {
        "displayName": display_name, "model": model,
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": list(uris)}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": prefix}},
        "labels": dict(labels),
    }
    return match["id"], spec
