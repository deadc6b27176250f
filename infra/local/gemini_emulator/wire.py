"""Wire-level helpers: Google's error body, proto3-JSON field names, timestamps, ids, field masks.

Google's JSON APIs accept both spellings of a field (`output_dimensionality` and
`outputDimensionality`) and answer in lowerCamelCase; unknown fields are rejected with
`Invalid JSON payload received. Unknown name ...`. These helpers give the rest of the emulator
one way to do each of those things.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any

try:  # orjson writes float32 arrays 25x faster than json; the emulator works without it.
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]

import numpy as np

__all__ = [
    "GRPC_CODES",
    "HTTP_STATUS_NAMES",
    "ApiError",
    "apply_field_mask",
    "camel",
    "check_fields",
    "dumps",
    "error_body",
    "field",
    "loads",
    "new_id",
    "rfc3339",
    "rpc_status",
    "snake",
]

#: HTTP code -> the canonical status name Google puts in `error.status`.
HTTP_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: google.rpc.Code numbers, used where a google.rpc.Status is embedded in a resource
#: (per-item errors, Operation.error) rather than returned as an HTTP error.
GRPC_CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


class ApiError(Exception):
    """An error answer: HTTP `code`, Google `status` name, `message`, optional details and headers."""

    def __init__(
        self,
        code: int,
        message: str,
        status: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS_NAMES.get(code, "UNKNOWN")
        self.details = details or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.status, self.details)


def error_body(
    code: int, message: str, status: str | None = None, details: list | None = None
) -> dict[str, Any]:
    """`{"error": {"code", "message", "status"[, "details"]}}`, the body of every non-200 answer."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or HTTP_STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def rpc_status(status: str, message: str) -> dict[str, Any]:
    """A google.rpc.Status as embedded in a resource: gRPC `code`, `message`, plus the `status` name."""
    return {"code": GRPC_CODES[status], "message": message, "status": status}


_CAMEL_RE = re.compile(r"_([a-z0-9])")
_SNAKE_RE = re.compile(r"(?<!^)([A-Z])")


def camel(name: str) -> str:
    """`output_dimensionality` -> `outputDimensionality` (lowerCamelCase names pass unchanged)."""
    return _CAMEL_RE.sub(lambda m: m.group(1).upper(), name)


def snake(name: str) -> str:
    """`outputDimensionality` -> `output_dimensionality`."""
    return _SNAKE_RE.sub(r"_\1", name).lower()


def field(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of lowerCamelCase field `name`, sent in either spelling."""
    if name in obj:
        return obj[name]
    return obj.get(snake(name), default)


def check_fields(obj: Any, allowed: Iterable[str], where: str) -> Mapping[str, Any]:
    """Return `obj` if it is a JSON object whose keys (either spelling) are all in `allowed`.

    Raises the 400 Google answers for a non-object or an unknown field name.
    """
    if not isinstance(obj, Mapping):
        raise ApiError(
            400, f"Invalid JSON payload received. Expected an object at '{where}', got {_json_type(obj)}."
        )
    allowed_set = set(allowed)
    for key in obj:
        if camel(key) not in allowed_set:
            raise ApiError(
                400, f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
            )
    return obj


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return type(value).__name__


def rfc3339(epoch_seconds: float) -> str:
    """RFC 3339 UTC timestamp with microseconds, as Google's JSON carries Timestamp fields."""
    moment = dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int) -> str:
    """A random lowercase alphanumeric id (the SDK extracts file ids with `[a-z0-9]+`)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Compact JSON bytes; numpy float32 arrays come out as their shortest float32 digits."""
    if orjson is not None:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    return json.dumps(value, separators=(",", ":"), default=_default).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; a syntax error becomes Google's 400."""
    try:
        if orjson is not None:
            return orjson.loads(data)
        return json.loads(data)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc


def page_token(*values: int, kind: str = "before") -> str:
    """An opaque page token: its kind (which listing order made it) and the numbers to resume from."""
    text = ":".join([kind, *(str(v) for v in values)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def parse_page_token(token: str, kind: str = "before") -> int | list[int]:
    """The number(s) inside a token from `page_token` of this `kind` (one number comes back bare);
    a foreign token, or one from another listing order, is a 400."""
    try:
        padded = token + "=" * (-len(token) % 4)
        found, *values = base64.urlsafe_b64decode(padded.encode()).decode().split(":")
        if found != kind or not values:
            raise ValueError(found)
        numbers = [int(v) for v in values]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Invalid page token: {token!r}.") from exc
    return numbers[0] if len(numbers) == 1 else numbers


def _split_top(spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ApiError(400, f"Invalid field selector: unbalanced parentheses in {spec!r}.")
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth != 0:
        raise ApiError(400, f"Invalid field selector: unbalanced parentheses in {spec!r}.")
    parts.append(spec[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_mask(spec: str) -> dict[str, Any]:
    """`name,metadata(state,batchStats),metadata.output/responsesFile` -> nested dict (None = whole)."""
    tree: dict[str, Any] = {}
    for part in _split_top(spec):
        sub = None
        if part.endswith(")") and "(" in part:
            head, _, inner = part.partition("(")
            sub = _parse_mask(inner[:-1])
            part = head
        path = [camel(p) for p in re.split(r"[./]", part) if p]
        if not path:
            raise ApiError(400, f"Invalid field selector: {spec!r}.")
        node = tree
        for name in path[:-1]:
            existing = node.get(name, {})
            if existing is None:  # already selected whole
                break
            node = node.setdefault(name, existing)
        else:
            last = path[-1]
            if sub is None:
                node[last] = None
            elif node.get(last, {}) is not None:
                merged = node.setdefault(last, {})
                merged.update(sub)
    return tree


def _select(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_select(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for name, sub in tree.items():
        if name in value:
            out[name] = value[name] if sub is None else _select(value[name], sub)
    return out


def apply_field_mask(value: dict[str, Any], spec: str | None) -> dict[str, Any]:
    """Keep only the fields the standard `fields` query parameter selects (top level and nested)."""
    if not spec:
        return value
    return _select(value, _parse_mask(spec))
