"""The Gemini API routes (v1beta, also v1 and v1alpha): models, batches, files, downloads, webhooks; the app.

API routes need a key (header x-goog-api-key or query `key`), except the resumable upload session
URL, which is its own credential. Every API request goes through `Emulator.api` (key check, then the
faults around its handler). A create counts the batch's tokens, then the quota ledger admits it or
answers 429 (no batch made). Every non-200 answer is Google's `{"error": {"code", "message", "status"}}`.
The key is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .admin import admin_routes
from .config import EmulatorSettings
from .emulator import Emulator
from .schema import (
    EMPTY_CONTENT_MESSAGE,
    CreateSpec,
    EmbedItem,
    check_model,
    parse_create,
    parse_embed_request,
)
from .store import MAX_FILE_BYTES, Batch, FileRecord
from .tokens import count_chunks
from .uploads import upload_routes
from .vertex_gcs import Storage
from .vertex_jobs import VertexJobs
from .vertex_routes import vertex_routes
from .web import api_version, base_url, json_response, page_size, page_token, read_json, split_verb
from .webhook_routes import webhook_routes
from .wire import ApiError, check_fields, error_body, new_id

__all__ = ["Emulator", "create_app"]

log = logging.getLogger("gemini_emulator")

MAX_EMBED_BATCH = 100


def create_app(settings: EmulatorSettings | None = None) -> Starlette:
    """The ASGI app; its `state.emulator` holds the parts. Workers start with the app's lifespan."""
    settings = settings or EmulatorSettings.from_env()
    emu = Emulator(settings)
    strict = settings.strict
    # -- the Vertex AI surface (vertex_*.py): its own jobs, the same embedder, tokens and faults ----------
    vertex = VertexJobs(emu.embedder, emu.faults, emu.tokens, Storage(settings.storage_host), emu.data_dir / "vertex",
                        model_slots=settings.workers, model_batch_size=settings.model_batch_size, strict=strict,
                        max_rows=settings.vertex_max_rows)
    gemini_reset = emu.reset
    emu.reset = lambda: (gemini_reset(), vertex.reset())  # type: ignore[method-assign]  # /_emulator/reset: both

    # -- models ------------------------------------------------------------------------------
    async def model_post(request: Request) -> Response:
        name, verb = split_verb(request.path_params["rest"])
        if verb == "asyncBatchEmbedContent":
            return await emu.api(request, "creates", lambda: create_batch(request, name), create=True)
        if verb == "embedContent":
            return await emu.api(request, "embeds", lambda: embed_content(request, name))
        if verb == "batchEmbedContents":
            return await emu.api(request, "embeds", lambda: batch_embed_contents(request, name))
        return await emu.api(request, "other", _not_found)

    async def _not_found() -> Response:
        raise ApiError(404, "Method not found.")

    def prepare_create(body: object, model: str) -> tuple[CreateSpec, int, FileRecord | None]:
        """The validated create, the tokens it enqueues (text parts and titles of all its requests) and its
        input file. Counting stops once past the model's token limit (the create is refused anyway); a
        file batch with no limit is counted after the create, in the background (see `count_later`)."""
        spec = parse_create(body, model, strict)
        limit = emu.store.ledger.token_limit(model)
        if spec.file_name is None:
            texts = [r.item.counted_text for r in spec.requests or []]
            chunks = (texts[i : i + 2048] for i in range(0, len(texts), 2048))
            return spec, count_chunks(chunks, emu.tokens, limit)[0], None
        file_id = spec.file_name.removeprefix("files/")
        with emu.store.lock:
            record = emu.store.files.get(file_id)
        if record is None:
            raise ApiError(400, f"batch.input_config.file_name: the file {spec.file_name} does not exist.")
        if record.size_bytes > MAX_FILE_BYTES:
            raise ApiError(400, f"The input file {spec.file_name} is larger than the 2 GB limit.")
        if limit is None and record.token_count is None:
            return spec, 0, record
        return spec, emu.file_tokens(record, limit), None

    async def create_batch(request: Request, name: str) -> Response:
        model = check_model(name, "asyncBatchEmbedContent", api_version(request))
        body = await read_json(request)
        spec, tokens, count_later = await anyio.to_thread.run_sync(prepare_create, body, model)
        fate = emu.faults.batch_fate()
        now = time.time()
        batch = Batch(
            id=new_id(36),
            model=model,
            display_name=spec.display_name,
            priority=spec.priority,
            seq=emu.store.next_seq(),
            fate=fate,
            not_before=now + fate.pending_seconds,
            inline=spec.requests,
            input_file=spec.file_name,
            create_time=now,
            request_count=len(spec.requests or []),
            tokens=tokens,
        )
        emu.store.add_batch(batch)  # the quota check: a 429 here makes no batch
        if count_later is not None:
            emu.count_later(batch, count_later)
        log.info(
            "%s created: %d inline items, file %s, %d tokens, priority %d",
            batch.name,
            batch.request_count,
            spec.file_name,
            tokens,
            spec.priority,
        )
        with emu.store.lock:
            return json_response(batch.operation(emu.store.emit_defaults))

    async def _vectors(items: list[EmbedItem]) -> list[np.ndarray]:
        def run() -> list[np.ndarray]:
            out: list[np.ndarray] = [np.empty(0)] * len(items)
            for chunk, vectors in emu.embedder.embed_items(items, settings.model_batch_size):
                for i, vector in zip(chunk, vectors, strict=True):
                    out[i] = vector
            return out

        return await anyio.to_thread.run_sync(run)

    async def embed_content(request: Request, name: str) -> Response:
        model = check_model(name, "embedContent", api_version(request))
        item = parse_embed_request(await read_json(request), "", strict, model)
        if item.empty:
            raise ApiError(400, f"* EmbedContentRequest.content: {EMPTY_CONTENT_MESSAGE}")
        (vector,) = await _vectors([item])
        return json_response({"embedding": {"values": vector}})

    async def batch_embed_contents(request: Request, name: str) -> Response:
        model = check_model(name, "batchEmbedContents", api_version(request))
        body = check_fields(await read_json(request), {"requests"}, "")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: at least one request is required.")
        if len(requests) > MAX_EMBED_BATCH:
            raise ApiError(
                400,
                f"* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch, "
                f"got {len(requests)}.",
            )
        items = [parse_embed_request(r, f"requests[{i}]", strict, model) for i, r in enumerate(requests)]
        for i, item in enumerate(items):
            if item.empty:
                raise ApiError(
                    400, f"* BatchEmbedContentsRequest.requests[{i}].content: {EMPTY_CONTENT_MESSAGE}"
                )
        vectors = await _vectors(items)
        return json_response({"embeddings": [{"values": v} for v in vectors]})

    async def model_get(request: Request) -> Response:
        async def handler() -> Response:
            version = api_version(request)
            name, verb = split_verb(request.path_params["rest"])
            if verb is not None:
                raise ApiError(404, "Method not found.")
            full = check_model(name, "embedContent", version)
            return json_response(
                {
                    "name": full,
                    "version": "001",
                    "displayName": f"{full.removeprefix('models/')} (emulated)",
                    "description": f"Emulated by a local {emu.embedder.name or emu.intended_model} model.",
                    "inputTokenLimit": 2048,
                    "outputTokenLimit": 1,
                    "supportedGenerationMethods": [
                        "embedContent",
                        "countTextTokens",
                        "countTokens",
                        "asyncBatchEmbedContent",
                    ],
                }
            )

        return await emu.api(request, "models", handler)

    # -- batches -------------------------------------------------------------------------------
    async def batches_list(request: Request) -> Response:
        async def handler() -> Response:
            api_version(request)
            order = emu.faults.list_order
            page, token = emu.store.list_batches(page_size(request), page_token(request), order)
            with emu.store.lock:
                body: dict[str, Any] = {}
                if page:
                    body["operations"] = [b.operation(emu.store.emit_defaults) for b in page]
                if token:
                    body["nextPageToken"] = token
            return json_response(body, fields=request.query_params.get("fields"))

        return await emu.api(request, "lists", handler)

    async def batch_route(request: Request) -> Response:
        batch_id, verb = split_verb(request.path_params["rest"])
        method = request.method

        async def get() -> Response:
            api_version(request)
            batch = emu.store.batch(batch_id)
            with emu.store.lock:
                op = batch.operation(emu.store.emit_defaults)
            return json_response(op, fields=request.query_params.get("fields"))

        async def cancel() -> Response:
            api_version(request)
            emu.store.cancel_batch(batch_id)
            return json_response({})

        async def delete() -> Response:
            api_version(request)
            emu.store.delete_batch(batch_id)
            return json_response({})

        if method == "GET" and verb is None:
            return await emu.api(request, "gets", get)
        if method == "POST" and verb == "cancel":
            return await emu.api(request, "cancels", cancel)
        if method == "DELETE" and verb is None:
            return await emu.api(request, "deletes", delete)
        return await emu.api(request, "other", _not_found)

    # -- files ---------------------------------------------------------------------------------
    async def files_list(request: Request) -> Response:
        async def handler() -> Response:
            version = api_version(request)
            page, token = emu.store.list_files(page_size(request), page_token(request))
            base = base_url(request)
            body: dict[str, Any] = {}
            if page:
                body["files"] = [f.resource(base, version) for f in page]
            if token:
                body["nextPageToken"] = token
            return json_response(body, fields=request.query_params.get("fields"))

        return await emu.api(request, "file_lists", handler)

    def _download(request: Request, file_id: str) -> Response:
        if request.query_params.get("alt") != "media":
            raise ApiError(400, "Downloading a file needs the query parameter alt=media.")
        record = emu.store.file(file_id)
        if record.source != "GENERATED":
            raise ApiError(400, f"Only generated files can be downloaded; files/{file_id} was uploaded.")
        return FileResponse(record.path, media_type=record.mime_type)

    async def file_route(request: Request) -> Response:
        file_id, verb = split_verb(request.path_params["rest"])
        method = request.method

        async def get() -> Response:
            version = api_version(request)
            record = emu.store.file(file_id)
            return json_response(
                record.resource(base_url(request), version), fields=request.query_params.get("fields")
            )

        async def download() -> Response:
            api_version(request)
            return _download(request, file_id)

        async def delete() -> Response:
            api_version(request)
            emu.store.delete_file(file_id)
            return json_response({})

        if method == "GET" and verb is None:
            return await emu.api(request, "file_gets", get)
        if method == "GET" and verb == "download":
            return await emu.api(request, "downloads", download)
        if method == "DELETE" and verb is None:
            return await emu.api(request, "file_deletes", delete)
        return await emu.api(request, "other", _not_found)

    async def download_route(request: Request) -> Response:
        file_id, verb = split_verb(request.path_params["rest"])

        async def download() -> Response:
            api_version(request)
            if verb != "download":
                raise ApiError(404, "Method not found.")
            return _download(request, file_id)

        return await emu.api(request, "downloads", download)

    # -- uploads -------------------------------------------------------------------------------

    async def http_exception(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        message = (
            "Method not found."
            if code == 405
            else "Requested entity was not found."
            if code == 404
            else str(exc)
        )
        return json_response(error_body(404 if code == 405 else code, message), 404 if code == 405 else code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_response(error_body(500, f"Internal error: {type(exc).__name__}"), 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emu.start()
        vertex.start()
        try:
            yield
        finally:
            vertex.stop()
            emu.close()

    routes = [
        *admin_routes(emu),
        Route("/{version}/models/{rest}", model_post, methods=["POST"]),
        Route("/{version}/models/{rest}", model_get, methods=["GET"]),
        Route("/{version}/batches", batches_list, methods=["GET"]),
        Route("/{version}/batches/{rest}", batch_route, methods=["GET", "POST", "DELETE"]),
        Route("/{version}/files", files_list, methods=["GET"]),
        Route("/{version}/files/{rest}", file_route, methods=["GET", "DELETE"]),
        *upload_routes(emu),
        *webhook_routes(emu),
        Route("/download/{version}/files/{rest}", download_route, methods=["GET"]),
        *vertex_routes(emu, vertex, settings.vertex_token),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception, Exception: server_error},
    )
    app.state.emulator = emu
    app.state.vertex = vertex
    return app
