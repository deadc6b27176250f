"""HTTP helpers shared by the routes: JSON answers, bounded bodies, path and paging parameters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .wire import ApiError, apply_field_mask, dumps, loads

__all__ = [
    "MAX_REQUEST_BYTES",
    "api_version",
    "base_url",
    "error_response",
    "json_response",
    "page_size",
    "page_token",
    "read_body",
    "read_json",
    "split_verb",
]

VERSIONS = frozenset({"v1beta", "v1", "v1alpha"})
MAX_REQUEST_BYTES = 20 * 1024 * 1024
_DRAIN_LIMIT = 256 * 1024 * 1024
_JSON = "application/json; charset=UTF-8"


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None, fields: str | None = None
) -> Response:
    """`value` as JSON, cut down to the `fields` selector when one is given."""
    if fields:
        value = apply_field_mask(value, fields)
    return Response(dumps(value), status_code=status, media_type=_JSON, headers=headers)


def error_response(exc: ApiError) -> Response:
    return json_response(exc.body(), exc.code, exc.headers)


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body, at most `limit` bytes; over it, drain what was sent and answer Google's 400."""
    chunks, total = [], 0
    too_big = False
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        too_big = True
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            too_big = True
        if too_big:
            if total > _DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise ApiError(400, f"Request payload size exceeds the limit: {limit} bytes.")
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        return {}
    return loads(raw)


def api_version(request: Request) -> str:
    version = request.path_params["version"]
    if version not in VERSIONS:
        raise ApiError(404, "Requested entity was not found.")
    return version


def base_url(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def page_size(request: Request) -> int | None:
    raw = request.query_params.get("pageSize") or request.query_params.get("page_size")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid value at 'page_size' (TYPE_INT32), {raw!r}") from None


def page_token(request: Request) -> str | None:
    return request.query_params.get("pageToken") or request.query_params.get("page_token") or None


def split_verb(rest: str) -> tuple[str, str | None]:
    name, sep, verb = rest.partition(":")
    return name, (verb if sep else None)
