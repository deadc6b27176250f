"""GeminiBatchProvider: the pipeline's `BatchProvider` port over `shared.gemini.GeminiClient`.

Errors pass through unchanged: the client's errors already are `TransientError` or `PermanentError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from shared.domain.jobs import ErrorInfo
from shared.gemini.client import GeminiClient
from shared.gemini.errors import GeminiNotFoundError, PermanentGeminiError
from shared.gemini.models import BatchItemResult, BatchState, EmbeddingBatch, Status
from shared.logging import get_logger
from shared.ports import BatchProvider, ItemResult, ProviderBatch, ProviderState

__all__ = ["FIND_MARGIN", "GeminiBatchProvider", "to_item_result", "to_provider_batch"]

#: Clocks differ between us and Google; a batch created this much "before" we asked still counts.
FIND_MARGIN = timedelta(minutes=5)
_FIND_PAGE_SIZE = 100

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


class GeminiBatchProvider(BatchProvider):
    def __init__(self, client: GeminiClient, *, find_margin: timedelta = FIND_MARGIN):
        self.client = client
        self.find_margin = find_margin

    def upload_requests(self, chunks: Iterable[bytes], size: int, display_name: str) -> str:
        return self.client.upload_file(chunks, size=size, display_name=display_name).name

    def create_batch(
        self,
        *,
        model: str,
        display_name: str,
        priority: int,
        requests: list[dict] | None = None,
        file_name: str | None = None,
    ) -> ProviderBatch:
        batch = self.client.create_embedding_batch(
            model=model,
            display_name=display_name,
            priority=priority,
            inline_requests=requests,
            file_name=file_name,
        )
        return to_provider_batch(batch)

    def find_batch(self, display_name_suffix: str, created_after: datetime) -> ProviderBatch | None:
        """Walks the listing newest first and stops at the first batch older than `created_after`
        (less `find_margin`); a batch without a creation time is judged by its name alone."""
        cutoff = _aware(created_after) - self.find_margin
        for batch in self.client.iter_batches(page_size=_FIND_PAGE_SIZE):
            created = _aware(batch.create_time) if batch.create_time else None
            if created is not None and created < cutoff:
                return None
            if batch.display_name.endswith(display_name_suffix):
                return to_provider_batch(batch)
        return None

    def get_batch(self, name: str) -> ProviderBatch:
        return to_provider_batch(self.client.get_batch(name))

    def cancel_batch(self, name: str) -> None:
        """Best effort. A batch that no longer exists, or that already finished (the API refuses to
        cancel it), is left as it is; other errors propagate."""
        try:
            self.client.cancel_batch(name)
        except GeminiNotFoundError:
            _log.info("batch to cancel does not exist", batch=name)
        except PermanentGeminiError:
            if not self.client.get_batch(name).is_terminal:
                raise
            _log.info("batch to cancel had already finished", batch=name)

    def iter_results(self, name: str) -> Iterator[ItemResult]:
        for result in self.client.iter_results(name):
            yield to_item_result(result)


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
        return ItemResult(key=result.key, values=result.values)
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
