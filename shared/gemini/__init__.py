"""A typed client of the Gemini API's Batch Mode for embeddings, over httpx.

from shared.gemini import GeminiClient

with GeminiClient(api_key) as gemini:
    batch = gemini.submit_embedding_batch(texts, display_name="Docs index 2025-11-25",
                                          task_type="retrieval_document", output_dimensionality=768)
    batch = gemini.await_completion(batch.name, on_progress=lambda b: print(b.progress_percentage))
    vectors = normalize(list(gemini.get_embeddings(batch).values()))
    retry = gemini.failed_items(batch)   # keys and errors of the items to resubmit
"""

from shared.gemini.client import (
    API_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    INLINE_LIMIT_BYTES,
    MAX_INTERACTIVE_REQUESTS,
    UPLOAD_CHUNK_SIZE,
    EmbedItem,
    GeminiClient,
)
from shared.gemini.errors import (
    AwaitTimeoutError,
    BatchNotCompleteError,
    GeminiError,
    GeminiNotFoundError,
    InvalidArgumentError,
    PermanentGeminiError,
    RetryableGeminiError,
)
from shared.gemini.models import (
    BatchItemResult,
    BatchPage,
    BatchState,
    BatchStats,
    EmbedContentRequest,
    EmbeddingBatch,
    File,
    Status,
)
from shared.gemini.polling import poll_interval_for, timeout_for
from shared.gemini.retry import RetryPolicy
from shared.gemini.vectors import cosine_similarity, normalize

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "INLINE_LIMIT_BYTES",
    "MAX_INTERACTIVE_REQUESTS",
    "UPLOAD_CHUNK_SIZE",
    "AwaitTimeoutError",
    "BatchItemResult",
    "BatchNotCompleteError",
    "BatchPage",
    "BatchState",
    "BatchStats",
    "EmbedContentRequest",
    "EmbedItem",
    "EmbeddingBatch",
    "File",
    "GeminiClient",
    "GeminiError",
    "GeminiNotFoundError",
    "InvalidArgumentError",
    "PermanentGeminiError",
    "RetryPolicy",
    "RetryableGeminiError",
    "Status",
    "cosine_similarity",
    "normalize",
    "poll_interval_for",
    "timeout_for",
]
