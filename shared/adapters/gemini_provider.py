"""GeminiBatchProvider: the pipeline's `BatchProvider` port over the Gemini API (`shared.gemini.GeminiClient`).

- Capabilities: gemini-embedding-001 as the API documents it (task types, 128..3072 dimensions, 2,048
  input tokens, a 2 GB input file) and the published Batch API quotas (Tier 1 enqueued tokens, 100
  concurrent batches, 20 GB of files), which settings may lower or raise.
- Inputs: staged items encoded as the Batch API's input file (`{"key", "request"}` lines), uploaded
  through the Files API. Batches are created from files only: a responses file keys every line, while
  inline responses have been reported to drop the metadata that carries keys.
- Recovery: every page of the batch listing is read (its order is not documented), and every batch whose
  display name ends with the tag is returned.
- Files: inputs are deleted when their batch ends; results files are deleted when written, where the API
  allows it (it is reported to refuse `files/batch-*` names: those expire after 48 hours).
- Errors: mapped in one place (`_mapped`) for every method: a 429 at create or upload is
  `CapacityExhausted` (nothing was made), other retryable errors `TransientError`, 404 `NotFound`, the rest
  `PermanentError`. No message carries the API key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared.domain.capabilities import Capabilities, Quotas
from shared.domain.jobs import ErrorInfo
from shared.domain.options import JobOptions
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.gemini.client import GeminiClient
from shared.gemini.errors import GeminiError, GeminiNotFoundError, PermanentGeminiError, RetryableGeminiError
from shared.gemini.models import (
    MAX_DIMENSIONS,
    MAX_INPUT_TOKENS,
    MIN_DIMENSIONS,
    BatchItemResult,
    BatchState,
    EmbeddingBatch,
    Status,
    TaskType,
    model_resource,
)
from shared.logging import get_logger
from shared.ports import BatchProvider, ItemResult, ProviderBatch, ProviderState, StagedItem

__all__ = ["FIND_MARGIN", "GEMINI_MODELS", "GeminiBatchProvider", "request_line", "to_item_result", "to_provider_batch"]

#: Clocks differ between us and Google; a batch created this much "before" we asked still counts.
FIND_MARGIN = timedelta(minutes=5)
_FIND_PAGE_SIZE = 100
_FIND_MAX_PAGES = 500  # 50,000 batches: the listing is read whole, whatever its order
_UPLOAD_CHUNK = 8 * 1024 * 1024
GIB = 1024 ** 3

GEMINI_MODELS = {
    "gemini-embedding-001": Capabilities(
        provider="gemini", model="gemini-embedding-001",
        task_types=tuple(t.value for t in TaskType), default_task_type=TaskType.RETRIEVAL_DOCUMENT.value,
        min_dimensions=MIN_DIMENSIONS, max_dimensions=MAX_DIMENSIONS, recommended_dimensions=(768, 1536, 3072),
        max_input_tokens=MAX_INPUT_TOKENS, max_batch_rows=None, max_batch_bytes=2 * 1000 ** 3,
        title_task_types=(TaskType.RETRIEVAL_DOCUMENT.value,),
        quotas=Quotas(enqueued_tokens=500_000, concurrent_batches=100, file_storage_bytes=20 * GIB),
        price_batch_per_million=0.075, price_interactive_per_million=0.15,
    ),
}

_STATES = {
    BatchState.UNSPECIFIED: ProviderState.PENDING,
    BatchState.PENDING: ProviderState.PENDING,
    BatchState.RUNNING: ProviderState.RUNNING,
    BatchState.SUCCEEDED: ProviderState.SUCCEEDED,
    BatchState.FAILED: ProviderState.FAILED,
    BatchState.CANCELLED: ProviderState.CANCELLED,
    BatchState.EXPIRED: ProviderState.EXPIRED,
}

_log = get_logger(__name__)


@contextmanager
def _mapped(what: str, *, quota_means_capacity: bool = False) -> Iterator[None]:
    """The Gemini client's errors, as the pipeline's: the one place they are mapped."""
    try:
        yield
    except RetryableGeminiError as exc:
        if quota_means_capacity and exc.status_code == 429:
            raise CapacityExhausted(f"{what}: {exc}", retry_after=exc.retry_after) from exc
        raise TransientError(f"{what}: {exc}", code=exc.status or "UNAVAILABLE") from exc
    except GeminiNotFoundError as exc:
        raise NotFound(f"{what}: {exc}") from exc
    except GeminiError as exc:
        raise PermanentError(f"{what}: {exc}", code=exc.status or "FAILED_PRECONDITION") from exc


def request_line(item: StagedItem, options: JobOptions) -> bytes:
    """One line of the Batch API's input file."""
    request: dict[str, Any] = {
        "model": model_resource(options.model),  # as the batch's own model is named
        "content": {"parts": [{"text": item.text}]},
        "outputDimensionality": options.output_dimensionality,
    }
    if options.task_type != TaskType.TASK_TYPE_UNSPECIFIED:
        request["taskType"] = options.task_type
    if item.title and options.task_type == TaskType.RETRIEVAL_DOCUMENT:
        request["title"] = item.title  # the API takes a title only for RETRIEVAL_DOCUMENT
    return orjson.dumps({"key": item.key, "request": request}) + b"\n"


class GeminiBatchProvider(BatchProvider):
    name = "gemini"

    def __init__(self, client: GeminiClient, *, find_margin: timedelta = FIND_MARGIN):
        self.client = client
        self.find_margin = find_margin

    def capabilities(self, model: str) -> Capabilities:
        plain = model.rsplit("/", 1)[-1]
        if plain not in GEMINI_MODELS:
            raise PermanentError(f"the Gemini API serves no batch embedding model {model!r} (known: "
                                 f"{', '.join(GEMINI_MODELS)})", code="UNKNOWN_MODEL")
        return GEMINI_MODELS[plain]

    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions, display_name: str) -> tuple[str, int]:
        size = sum(len(request_line(item, options)) for item in items())

        def chunks() -> Iterator[bytes]:
            buffer: list[bytes] = []
            held = 0
            for item in items():
                line = request_line(item, options)
                buffer.append(line)
                held += len(line)
                if held >= _UPLOAD_CHUNK:
                    yield b"".join(buffer)
                    buffer, held = [], 0
            if buffer:
                yield b"".join(buffer)

        with _mapped("uploading a batch input", quota_means_capacity=True):
            return self.client.upload_file(chunks(), size=size, display_name=display_name).name, size

    def create_batch(self, *, options: JobOptions, input_ref: str, display_name: str, tag: str) -> ProviderBatch:
        with _mapped("creating a batch", quota_means_capacity=True):
            batch = self.client.create_embedding_batch(
                model=options.model, display_name=display_name, priority=options.priority, file_name=input_ref,
                retry_quota=False,
            )
        return to_provider_batch(batch)

    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        """Every page of the listing, whatever its order; batches created before `created_after` (less
        `find_margin`) are left out, a batch without a creation time is judged by its name alone."""
        cutoff = _aware(created_after) - self.find_margin
        found = []
        with _mapped("listing batches"):
            token: str | None = None
            for _ in range(_FIND_MAX_PAGES):
                page = self.client.list_batches(_FIND_PAGE_SIZE, token)
                for batch in page.batches:
                    created = _aware(batch.create_time) if batch.create_time else None
                    if batch.display_name.endswith(tag) and (created is None or created >= cutoff):
                        found.append(to_provider_batch(batch))
                token = page.next_page_token
                if not token:
                    break
        return found

    def get_batch(self, name: str) -> ProviderBatch:
        with _mapped(f"reading {name}"):
            return to_provider_batch(self.client.get_batch(name))

    def cancel_batch(self, name: str) -> None:
        """Best effort. A batch that no longer exists, or that already finished (the API refuses to
        cancel it), is left as it is; other errors propagate."""
        with _mapped(f"cancelling {name}"):
            try:
                self.client.cancel_batch(name)
            except GeminiNotFoundError:
                _log.info("batch to cancel does not exist", batch=name)
            except PermanentGeminiError:
                if not self.client.get_batch(name).is_terminal:
                    raise
                _log.info("batch to cancel had already finished", batch=name)

    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        with _mapped(f"reading the results of {name}"):
            for result in self.client.iter_results(name, start=start):
                yield to_item_result(result)

    def delete_input(self, input_ref: str) -> None:
        with _mapped(f"deleting {input_ref}"), suppress(GeminiNotFoundError):
            self.client.delete_file(input_ref)

    def delete_results(self, name: str) -> bool:
        with _mapped(f"deleting the results of {name}"):
            batch = self.client.get_batch(name)
            responses = batch.responses_file
            if not responses:
                return True
            try:
                self.client.delete_file(responses)
            except GeminiNotFoundError:
                return True
            except PermanentGeminiError as exc:
                if exc.status_code == 403:  # the Files API's answer for a file that no longer exists
                    return True
                # reported: `files/batch-*` names are refused (too long): kept until they expire
                _log.info("the API keeps this results file until it expires", batch=name, error=str(exc))
                return False
        return True


    def embed_query(self, text: str, options: JobOptions) -> list[float]:
        with _mapped("embedding a query"):
            return self.client.embed_content(text, model=options.model, task_type=TaskType.RETRIEVAL_QUERY,
                                             output_dimensionality=options.output_dimensionality)


def to_provider_batch(batch: EmbeddingBatch) -> ProviderBatch:
    stats = batch.batch_stats
    return ProviderBatch(
        name=batch.name,
        state=_STATES[batch.state],
        display_name=batch.display_name,
        total=stats.request_count if stats else 0,
        succeeded=stats.successful_request_count if stats else 0,
        failed=stats.failed_request_count if stats else 0,
        pending=stats.pending_request_count if stats else 0,
        error=_error_info(batch.error),
        create_time=batch.create_time,
    )


def to_item_result(result: BatchItemResult) -> ItemResult:
    if result.ok:
        return ItemResult(key=result.key, values=result.values, tokens=result.token_count)
    return ItemResult(
        key=result.key, error=_error_info(result.error) or ErrorInfo(code="UNKNOWN", message="no result")
    )


def _error_info(status: Status | None) -> ErrorInfo | None:
    if status is None:
        return None
    return ErrorInfo(code=status.name, message=status.message)


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so they compare with the API's."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
