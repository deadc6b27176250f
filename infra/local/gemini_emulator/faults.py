"""Fault injection: a per-process plan (env `GEMINI_EMULATOR_FAULTS`, admin `PUT /_emulator/faults`)
and a per-request header (`X-Emulator-Fault: 429;retry-after=2`).

Keys (other engineers' tests rely on these names; more may be added, none renamed):

    create_429            {"count": N, "retry_after_seconds": S}  next N creates -> 429 + Retry-After
    http_5xx              {"count": N, "status": 503, "path_contains": "..."}  next N matching requests
    item_failure_rate     0.1   that share of items fails, chosen by text hash (deterministic)
    item_failure_attempts 1     with the rate: a chosen text fails only its first N times
    item_failure_status   "INTERNAL"  the status of those per-item errors
    fail_texts_containing "..." items whose text contains it always fail (INTERNAL)
    expire_batches        true  new batches end EXPIRED, with no results
    fail_batches          true  new batches end FAILED with an error
    pending_seconds       S     new batches wait S seconds in PENDING
    seconds_per_item      x     slow processing (applies to running batches at once)
    hold_queue            true  no PENDING batch starts until this is cleared (tests of ordering)
    lose_create_response  {"count": N, "status": 503}  next N creates DO make their batch (it runs), but the
                          client gets that 5xx (500, 502, 503 or 504), as when an answer is lost in transit
    list_order            "newest" (default, as observed live) | "oldest" | "random": GET batches order

Counted faults (create_429, http_5xx, lose_create_response) are consumed atomically: concurrent requests never get more
than N of them between them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .wire import GRPC_CODES, ApiError, loads

__all__ = [
    "LIST_ORDERS",
    "BatchFate",
    "FaultPlanError",
    "Faults",
    "ItemFailure",
    "parse_fault_header",
    "text_fraction",
]

KNOWN_KEYS = frozenset(
    {
        "create_429",
        "http_5xx",
        "item_failure_rate",
        "item_failure_attempts",
        "item_failure_status",
        "fail_texts_containing",
        "expire_batches",
        "fail_batches",
        "pending_seconds",
        "seconds_per_item",
        "hold_queue",
        "lose_create_response",
        "list_order",
    }
)
LIST_ORDERS = ("newest", "oldest", "random")
LOST_ANSWER_STATUSES = (500, 502, 503, 504)


class FaultPlanError(ValueError):
    """A fault plan that cannot be applied; the message names the key and what was wrong."""


@dataclass(frozen=True)
class ItemFailure:
    status: str
    message: str


@dataclass(frozen=True)
class BatchFate:
    """What the plan decided for a batch when it was created."""

    pending_seconds: float = 0.0
    expire: bool = False
    fail: bool = False


def text_fraction(text: str) -> float:
    """A number in [0, 1) fixed by the text alone (blake2b), so failure choices are reproducible."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"emu-fault").digest()
    return int.from_bytes(digest, "big") / 2**64


def _number(plan: Mapping[str, Any], key: str, minimum: float = 0.0, maximum: float | None = None) -> float:
    value = plan[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultPlanError(f"{key} must be a number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise FaultPlanError(f"{key} must be {bound}, got {value!r}")
    return float(value)


def _int(obj: Mapping[str, Any], key: str, where: str, default: int | None = None, minimum: int = 0) -> int:
    if key not in obj:
        if default is None:
            raise FaultPlanError(f"{where}.{key} is required")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultPlanError(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _flag(plan: Mapping[str, Any], key: str) -> bool:
    value = plan[key]
    if not isinstance(value, bool):
        raise FaultPlanError(f"{key} must be true or false, got {value!r}")
    return value


def _object(plan: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """`plan[key]`, which must be an object with no keys but `allowed`."""
    spec = plan[key]
    if not isinstance(spec, Mapping):
        raise FaultPlanError(f"{key} must be an object {{{', '.join(allowed)}}}")
    extra = set(spec) - set(allowed)
    if extra:
        raise FaultPlanError(f"{key} has unknown keys {sorted(extra)}")
    return spec


def _validate(plan: Any) -> dict[str, Any]:
    if not isinstance(plan, Mapping):
        raise FaultPlanError(f"a fault plan is a JSON object, got {type(plan).__name__}")
    unknown = sorted(set(plan) - KNOWN_KEYS)
    if unknown:
        raise FaultPlanError(f"unknown fault keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    out: dict[str, Any] = {}
    if "create_429" in plan:
        spec = _object(plan, "create_429", ("count", "retry_after_seconds"))
        retry = spec.get("retry_after_seconds", 1)
        if isinstance(retry, bool) or not isinstance(retry, (int, float)) or retry < 0:
            raise FaultPlanError(f"create_429.retry_after_seconds must be a number >= 0, got {retry!r}")
        out["create_429"] = {"count": _int(spec, "count", "create_429"), "retry_after_seconds": retry}
    if "http_5xx" in plan:
        spec = _object(plan, "http_5xx", ("count", "status", "path_contains"))
        status = _int(spec, "status", "http_5xx", default=503, minimum=500)
        if status > 599:
            raise FaultPlanError(f"http_5xx.status must be 500..599, got {status}")
        path = spec.get("path_contains", "")
        if not isinstance(path, str):
            raise FaultPlanError(f"http_5xx.path_contains must be a string, got {path!r}")
        out["http_5xx"] = {"count": _int(spec, "count", "http_5xx"), "status": status, "path_contains": path}
    if "item_failure_rate" in plan:
        out["item_failure_rate"] = _number(plan, "item_failure_rate", 0.0, 1.0)
    if "item_failure_attempts" in plan:
        out["item_failure_attempts"] = _int(plan, "item_failure_attempts", "plan", minimum=1)
    if "item_failure_status" in plan:
        status = plan["item_failure_status"]
        if status not in GRPC_CODES or status == "OK":
            raise FaultPlanError(f"item_failure_status must be a google.rpc.Code name, got {status!r}")
        out["item_failure_status"] = status
    if "fail_texts_containing" in plan:
        needle = plan["fail_texts_containing"]
        if not isinstance(needle, str) or not needle:
            raise FaultPlanError(f"fail_texts_containing must be a non-empty string, got {needle!r}")
        out["fail_texts_containing"] = needle
    if "lose_create_response" in plan:
        spec = _object(plan, "lose_create_response", ("count", "status"))
        status = _int(spec, "status", "lose_create_response", default=503, minimum=500)
        if status not in LOST_ANSWER_STATUSES:
            raise FaultPlanError(f"lose_create_response.status must be one of {LOST_ANSWER_STATUSES}, got {status}")
        out["lose_create_response"] = {"count": _int(spec, "count", "lose_create_response"), "status": status}
    if "list_order" in plan:
        order = plan["list_order"]
        if order not in LIST_ORDERS:
            raise FaultPlanError(f"list_order must be one of {list(LIST_ORDERS)}, got {order!r}")
        out["list_order"] = order
    for key in ("expire_batches", "fail_batches", "hold_queue"):
        if key in plan:
            out[key] = _flag(plan, key)
    for key in ("pending_seconds", "seconds_per_item"):
        if key in plan:
            out[key] = _number(plan, key)
    return out


class Faults:
    """The process's current fault plan and its counters; thread-safe."""

    def __init__(self, plan: Mapping[str, Any] | str | None = None) -> None:
        self._lock = threading.Lock()
        self._plan: dict[str, Any] = {}
        self._seen: dict[str, int] = {}
        self.injected = 0
        if plan:
            self.replace(plan)

    def replace(self, plan: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
        """Validate and install `plan` (a dict or its JSON), resetting counters; return the plan."""
        if isinstance(plan, (str, bytes)):
            try:
                plan = loads(plan)
            except ApiError as exc:
                raise FaultPlanError(f"fault plan is not valid JSON: {exc.message}") from exc
        validated = _validate(plan)
        with self._lock:
            self._plan = validated
            self._seen = {}
        return self.snapshot()

    def clear(self) -> None:
        with self._lock:
            self._plan = {}
            self._seen = {}

    def snapshot(self) -> dict[str, Any]:
        """The plan as it stands, with remaining counts."""
        with self._lock:
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._plan.items()}

    def _take(self, key: str, path: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            spec = self._plan.get(key)
            if not spec or spec["count"] <= 0:
                return None
            if path is not None and spec.get("path_contains", "") not in path:
                return None
            spec["count"] -= 1
            self.injected += 1
            return dict(spec)

    def take_create_429(self) -> ApiError | None:
        """The 429 for this create call, if the plan still has one."""
        spec = self._take("create_429")
        if spec is None:
            return None
        retry = spec["retry_after_seconds"]
        return ApiError(
            429,
            "Resource has been exhausted (e.g. check quota). Injected by the emulator's create_429 fault.",
            headers={"Retry-After": _seconds_header(retry)},
        )

    def take_http_5xx(self, path: str) -> ApiError | None:
        """The 5xx for this request path, if the plan still has one matching it."""
        spec = self._take("http_5xx", path)
        if spec is None:
            return None
        return ApiError(
            spec["status"], f"Injected by the emulator's http_5xx fault (status {spec['status']})."
        )

    def take_lost_create(self) -> ApiError | None:
        """The error that replaces a successful create's answer, if the plan still has one."""
        spec = self._take("lose_create_response")
        if spec is None:
            return None
        return ApiError(
            spec["status"],
            f"Injected by the emulator's lose_create_response fault (status {spec['status']}): "
            "the request may have been processed.",
        )

    def item_failure(self, text: str) -> ItemFailure | None:
        """Whether this item fails now; counts the sighting for `item_failure_attempts`."""
        with self._lock:
            plan = self._plan
            needle = plan.get("fail_texts_containing")
            if needle and needle in text:
                return ItemFailure("INTERNAL", f"Injected failure: text contains {needle!r}.")
            rate = plan.get("item_failure_rate", 0.0)
            if rate <= 0.0 or text_fraction(text) >= rate:
                return None
            status = plan.get("item_failure_status", "INTERNAL")
            attempts = plan.get("item_failure_attempts")
            if attempts is None:
                return ItemFailure(status, "Injected failure (item_failure_rate).")
            key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            if seen <= attempts:
                return ItemFailure(
                    status, f"Injected failure (item_failure_rate), attempt {seen} of {attempts}."
                )
            return None

    def batch_fate(self) -> BatchFate:
        with self._lock:
            return BatchFate(
                pending_seconds=self._plan.get("pending_seconds", 0.0),
                expire=self._plan.get("expire_batches", False),
                fail=self._plan.get("fail_batches", False),
            )

    @property
    def seconds_per_item(self) -> float:
        with self._lock:
            return self._plan.get("seconds_per_item", 0.0)

    @property
    def list_order(self) -> str:
        with self._lock:
            return self._plan.get("list_order", "newest")

    @property
    def hold_queue(self) -> bool:
        with self._lock:
            return self._plan.get("hold_queue", False)


def _seconds_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def parse_fault_header(value: str) -> ApiError:
    """`429;retry-after=2` or `503` -> the error that one request gets; a malformed header is a 400."""
    head, *params = [p.strip() for p in value.split(";")]
    try:
        code = int(head)
    except ValueError:
        raise ApiError(400, f"X-Emulator-Fault must start with an HTTP status code, got {value!r}.") from None
    if not 400 <= code <= 599:
        raise ApiError(400, f"X-Emulator-Fault status must be 400..599, got {code}.")
    headers: dict[str, str] = {}
    for param in params:
        name, _, raw = param.partition("=")
        if name.strip().lower() != "retry-after":
            raise ApiError(400, f"X-Emulator-Fault: unknown parameter {name!r} (known: retry-after).")
        try:
            headers["Retry-After"] = _seconds_header(float(raw))
        except ValueError:
            raise ApiError(400, f"X-Emulator-Fault: retry-after must be a number, got {raw!r}.") from None
    return ApiError(code, f"Injected by the emulator's X-Emulator-Fault header ({code}).", headers=headers)
