"""The webhooks routes (v1beta, also v1 and v1alpha): create, list, get, update, delete, rotate a secret.

Every route goes through `Emulator.api` (key check, faults) like the rest of the Gemini surface.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .emulator import Emulator
from .web import api_version, json_response, page_size, page_token, read_json, split_verb
from .wire import ApiError

__all__ = ["webhook_routes"]


def webhook_routes(emu: Emulator) -> list[Route]:
    hooks = emu.webhooks

    async def collection(request: Request) -> Response:
        async def create() -> Response:
            api_version(request)
            webhook_id = request.query_params.get("webhook_id") or request.query_params.get("webhookId")
            return json_response(hooks.create(await read_json(request), webhook_id))

        async def listing() -> Response:
            api_version(request)
            return json_response(hooks.list(page_size(request), page_token(request)))

        if request.method == "POST":
            return await emu.api(request, "webhook_creates", create)
        return await emu.api(request, "webhook_lists", listing)

    async def member(request: Request) -> Response:
        hook_id, verb = split_verb(request.path_params["rest"])
        method = request.method

        async def get() -> Response:
            api_version(request)
            return json_response(hooks.get(hook_id))

        async def update() -> Response:
            api_version(request)
            mask = request.query_params.get("update_mask") or request.query_params.get("updateMask")
            return json_response(hooks.update(hook_id, await read_json(request), mask))

        async def delete() -> Response:
            api_version(request)
            hooks.delete(hook_id)
            return json_response({})

        async def rotate() -> Response:
            api_version(request)
            return json_response(hooks.rotate(hook_id, await read_json(request)))

        async def not_found() -> Response:
            raise ApiError(404, "Method not found.")

        if verb is None and method == "GET":
            return await emu.api(request, "webhook_gets", get)
        if verb is None and method == "PATCH":
            return await emu.api(request, "webhook_updates", update)
        if verb is None and method == "DELETE":
            return await emu.api(request, "webhook_deletes", delete)
        if verb == "rotateSigningSecret" and method == "POST":
            return await emu.api(request, "webhook_rotations", rotate)
        return await emu.api(request, "other", not_found)

    return [
        Route("/{version}/webhooks", collection, methods=["GET", "POST"]),
        Route("/{version}/webhooks/{rest}", member, methods=["GET", "PATCH", "DELETE", "POST"]),
    ]
