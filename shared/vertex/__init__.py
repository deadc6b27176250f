"""A small client of Vertex AI's batch prediction jobs and interactive embeddings, over httpx and google-auth.

It stands alone (nothing from the pipeline's domain, services or ports): `shared.adapters.vertex_provider`
builds the pipeline's provider on it.

    from shared.vertex import AdcTokens, VertexClient

    with VertexClient("my-project", tokens=AdcTokens()) as vertex:
        job = vertex.create_batch_job("us-central1", {...BatchPredictionJob...})
        job = vertex.get_batch_job(job.name)
"""

from shared.vertex.auth import AdcTokens, StaticToken, TokenSource
from shared.vertex.client import (
    API_VERSION,
    BatchJob,
    CompletionStats,
    JobStatus,
    VertexClient,
    endpoint_for,
    location_of,
)
from shared.vertex.errors import (
    InvalidArgumentError,
    PermanentVertexError,
    RetryableVertexError,
    VertexAuthError,
    VertexError,
    VertexNotFoundError,
)

__all__ = [
    "API_VERSION",
    "AdcTokens",
    "BatchJob",
    "CompletionStats",
    "InvalidArgumentError",
    "JobStatus",
    "PermanentVertexError",
    "RetryableVertexError",
    "StaticToken",
    "TokenSource",
    "VertexAuthError",
    "VertexClient",
    "VertexError",
    "VertexNotFoundError",
    "endpoint_for",
    "location_of",
]
