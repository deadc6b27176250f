"""The emulator's own routes under /_emulator (no key): health, fault plan, quotas, reset, stats, cache.

    GET  health                 ready once the model is loaded
    GET|PUT|DELETE faults       the fault plan (faults.py)
    GET|PUT quotas              the quota limits (quotas.py); PUT replaces them, a bad one is a 400
    POST reset                  back to the start state (Emulator.reset)
    GET  stats                  calls per endpoint, batch states, quota usage and peaks, webhook deliveries
    POST stats:resetPeaks       peaks start again from the current usage
    DELETE cache                forget the cached vectors
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .embedder import TARGET_DIMS
from .emulator import Emulator
from .faults import FaultPlanError
from .quotas import QuotaError
from .web import error_response, json_response, read_body
from .wire import ApiError, error_body

__all__ = ["admin_routes"]

log = logging.getLogger("gemini_emulator")


def admin_routes(emu: Emulator) -> list[Route]:
    """Health answers at once, even while the model loads ("ready": false)."""

    async def health(request: Request) -> Response:
        embedder = emu.embedder
        body: dict[str, Any] = {
            "status": "ok" if embedder.error is None else "error",
            "model": embedder.name or emu.intended_model,
            "ready": embedder.ready,
            "dimensions": TARGET_DIMS,
        }
        if embedder.model_dimensions:
            body["encoderDimensions"] = embedder.model_dimensions
        if embedder.load_seconds is not None:
            body["loadSeconds"] = round(embedder.load_seconds, 3)
        if embedder.error:
            body["error"] = embedder.error
        return json_response(body, 200 if embedder.error is None else 500)

    async def faults_route(request: Request) -> Response:
        if request.method == "GET":
            return json_response(emu.faults.snapshot())
        if request.method == "DELETE":
            emu.faults.clear()
            emu.engine.notify()
            return json_response({})
        try:
            plan = emu.faults.replace(await read_body(request))
        except FaultPlanError as exc:
            return json_response(error_body(400, str(exc)), 400)
        except ApiError as exc:
            return error_response(exc)
        emu.engine.notify()
        log.info("fault plan replaced: %s", sorted(plan))
        return json_response(plan)

    async def quotas_route(request: Request) -> Response:
        if request.method == "GET":
            return json_response(emu.store.ledger.limits())
        try:
            limits = emu.store.ledger.replace(await read_body(request))
        except QuotaError as exc:
            return json_response(error_body(400, str(exc)), 400)
        except ApiError as exc:
            return error_response(exc)
        log.info("quotas replaced: %s", limits)
        return json_response(limits)

    async def reset(request: Request) -> Response:
        emu.reset()
        log.info("reset: batches, files, faults, stats, cache and API-made webhooks cleared; quotas as at start")
        return json_response({})

    async def reset_peaks(request: Request) -> Response:
        emu.store.ledger.reset_peaks()
        return json_response({})

    async def clear_cache(request: Request) -> Response:
        return json_response({"cleared": emu.embedder.clear_cache()})

    async def stats(request: Request) -> Response:
        calls = emu.stats.snapshot()
        with emu.store.lock:
            started = list(emu.store.started)
            states = Counter(b.state for b in emu.store.batches.values())
        return json_response(
            {
                "calls": calls,
                "total": sum(calls.values()),
                "batchesStarted": started,
                "batchStates": dict(states),
                "encodedTexts": emu.embedder.encoded_texts,
                "cacheHits": emu.embedder.cache_hits,
                "cacheEntries": emu.embedder.cache_size,
                "faultsInjected": emu.faults.injected,
                **emu.store.ledger.snapshot(),
                "quotas": emu.store.ledger.limits(),
                "tokenCounter": emu.tokens.name,
                "webhookDeliveries": emu.dispatcher.stats(),
            }
        )

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/faults", faults_route, methods=["GET", "PUT", "DELETE"]),
        Route("/_emulator/quotas", quotas_route, methods=["GET", "PUT"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/stats:resetPeaks", reset_peaks, methods=["POST"]),
        Route("/_emulator/cache", clear_cache, methods=["DELETE"]),
    ]
