"""The emulator's parts wired together, and the pipeline every API request goes through.

Every API request passes, in order: key check, the X-Emulator-Fault header, the http_5xx fault, (creates
only) the create_429 fault, its handler, then (creates that succeeded only) the lose_create_response
fault, which replaces the answer of a batch that was made.
"""

from __future__ import annotations

import hmac
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from .config import EmulatorSettings
from .embedder import Embedder
from .encoder import HashEncoder, OnnxMiniLMEncoder, SentenceTransformersEncoder, TextEncoder
from .engine import Engine
from .faults import Faults, parse_fault_header
from .quotas import Ledger
from .store import Batch, FileRecord, Store
from .tokens import RegexCounter, TokenCounter, WordPieceCounter, file_tokens
from .web import error_response
from .webhooks import Dispatcher, WebhookRegistry
from .wire import ApiError

__all__ = ["Emulator", "Stats"]

log = logging.getLogger("gemini_emulator")

_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_INVALID_KEY_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]


class Stats:
    """Calls per endpoint, for the benchmarks' provider-calls-per-job figures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    def count(self, endpoint: str) -> None:
        with self._lock:
            self._calls[endpoint] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()


def _default_encoder_factory(settings: EmulatorSettings) -> Callable[[], TextEncoder]:
    if settings.encoder == "hash":
        return HashEncoder
    if settings.encoder == "sentence-transformers":
        return lambda: SentenceTransformersEncoder(settings.st_model, settings.threads, settings.max_tokens)
    return lambda: OnnxMiniLMEncoder(
        settings.model_path, settings.tokenizer_path, settings.max_tokens, settings.threads, settings.spin
    )


def _token_counter(settings: EmulatorSettings) -> TokenCounter:
    kind = settings.token_counter or ("words" if settings.encoder == "hash" else "wordpiece")
    return RegexCounter() if kind == "words" else WordPieceCounter(settings.tokenizer_path)


class Emulator:
    """The emulator's parts, wired: store (with the quota ledger), faults, embedder, engine, webhooks,
    stats. Bad quota or webhook configuration raises QuotaError / WebhookConfigError here."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        ledger = Ledger(settings.quotas_json)
        self.webhooks = WebhookRegistry(settings.webhooks_json)
        self._own_dir = settings.data_dir is None
        self.data_dir = Path(settings.data_dir or tempfile.mkdtemp(prefix="gemini-emulator-"))
        self.store = Store(self.data_dir, emit_defaults=settings.emit_defaults, ledger=ledger)
        self.faults = Faults(settings.faults_json)
        self.tokens = _token_counter(settings)
        self.embedder = Embedder(_default_encoder_factory(settings), settings.cache_entries)
        self.engine = Engine(
            self.store,
            self.embedder,
            self.faults,
            workers=settings.workers,
            model_batch_size=settings.model_batch_size,
            window_size=settings.window_size,
            shuffle_above=settings.shuffle_above,
            strict=settings.strict,
            max_running=settings.max_running,
            token_counter=self.tokens if settings.item_token_counts else None,
        )
        self.dispatcher = Dispatcher(
            self.webhooks,
            retry_seconds=settings.webhook_retry_seconds,
            backoff_seconds=settings.webhook_backoff_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
        self.store.on_batch_end = self.dispatcher.batch_ended
        self.stats = Stats()
        self.intended_model = {"onnx": OnnxMiniLMEncoder.name, "hash": HashEncoder.name}.get(
            settings.encoder, "sentence-transformers"
        )
        self._start_quotas = ledger.limits()

    def start(self) -> None:
        self.engine.start()
        self.dispatcher.start()
        if self.settings.preload:
            self.embedder.start_loading()

    def reset(self) -> None:
        """Back to the state at start: no batches, files, faults or stats; quotas and webhooks as configured."""
        self.store.reset()
        self.store.ledger.replace(self._start_quotas)
        self.faults.clear()
        self.stats.clear()
        self.embedder.clear_cache()
        self.webhooks.reset()
        self.dispatcher.reset()

    def file_tokens(self, record: FileRecord, stop_above: int | None = None) -> int:
        """Tokens of an input file's requests: counted once per file (files never change), or only until
        they pass `stop_above` (then the count so far, which is over it)."""
        if record.token_count is not None:
            return record.token_count
        count, complete = file_tokens(record.path, self.tokens, stop_above)
        if complete:
            record.token_count = count
        return count

    def count_later(self, batch: Batch, record: FileRecord) -> None:
        """Count a file batch's tokens on a background thread, for the stats (no limit applies to it)."""

        def count() -> None:
            try:
                self.store.add_batch_tokens(batch, self.file_tokens(record))
            except OSError as exc:  # the file was deleted meanwhile: the batch will fail on its own
                log.info("%s: tokens not counted (%s)", batch.name, exc)

        threading.Thread(target=count, name=f"emulator-count-{batch.id[:8]}", daemon=True).start()

    def close(self) -> None:
        self.dispatcher.stop()
        self.engine.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- request plumbing ------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            raise ApiError(403, _MISSING_KEY)
        expected = self.settings.api_key
        if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
            raise ApiError(
                400, "API key not valid. Please pass a valid API key.", details=_INVALID_KEY_DETAILS
            )

    async def api(
        self,
        request: Request,
        endpoint: str,
        handler: Callable[[], Awaitable[Response]],
        *,
        key: bool = True,
        create: bool = False,
    ) -> Response:
        started = time.perf_counter()
        self.stats.count(endpoint)
        try:
            if key:
                self.check_key(request)
            header = request.headers.get("x-emulator-fault")
            if header:
                raise parse_fault_header(header)
            fault = self.faults.take_http_5xx(request.url.path)
            if fault is None and create:
                fault = self.faults.take_create_429()
            if fault is not None:
                raise fault
            response = await handler()
            if create and response.status_code == 200:
                lost = self.faults.take_lost_create()
                if lost is not None:
                    log.info("create answered %d by the lose_create_response fault (the batch exists)", lost.code)
                    response = error_response(lost)
        except ApiError as exc:
            response = error_response(exc)
        log.info(
            "%s %s -> %d (%.1f ms)",
            request.method,
            request.url.path,  # never the query string: it may carry the key
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response
