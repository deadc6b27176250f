"""Wiring: the real adapters, built once per process on first use and reused across invocations."""

from __future__ import annotations

from functools import lru_cache

from shared.config import Settings, get_settings
from shared.logging import configure_logging, register_secret
from shared.ports import BatchProvider
from shared.services.context import Context
from shared.services.messages import Outbox

__all__ = ["build_context", "context", "context_for_webhook", "setup_logging"]


def build_providers(settings: Settings) -> dict[str, BatchProvider]:
    """The providers `settings` enable (`PROVIDER`, and any in `PROVIDERS`), each built once."""
    providers: dict[str, BatchProvider] = {}
    for name in settings.enabled_providers():
        if name == "gemini":
            from shared.adapters.gemini_provider import GeminiBatchProvider
            from shared.gemini import GeminiClient

            providers[name] = GeminiBatchProvider(GeminiClient.from_settings(settings))
        elif name == "vertex":
            from shared.adapters.vertex_provider import VertexBatchProvider

            providers[name] = VertexBatchProvider.from_settings(settings)
        else:
            raise ValueError(f"unknown provider {name!r} in PROVIDER/PROVIDERS: use gemini or vertex")
    return providers


def build_context(settings: Settings) -> Context:
    """A context over Firestore, Cloud Storage, Pub/Sub and the providers, as `settings` say."""
    from datetime import timedelta

    from google.cloud import firestore, pubsub_v1, storage

    from shared.adapters.firestore_cache import FirestoreEmbeddingCache
    from shared.adapters.firestore_jobs import FirestoreJobRepository, FirestoreLedgerRepository
    from shared.adapters.gcs_blobs import GcsBlobStore
    from shared.adapters.pubsub_publisher import PubSubPublisher

    project = settings.google_cloud_project
    db = firestore.Client(project=project)
    return Context(
        jobs=FirestoreJobRepository(db, settings.jobs_collection),
        ledgers=FirestoreLedgerRepository(db, settings.ledgers_collection),
        blobs=GcsBlobStore(storage.Client(project=project)),
        providers=build_providers(settings),
        publisher=PubSubPublisher(pubsub_v1.PublisherClient(), project),
        settings=settings,
        cache=FirestoreEmbeddingCache(db, settings.cache_collection, timedelta(days=settings.cache_ttl_days))
        if settings.reuse_embeddings else None,
    )


@lru_cache(maxsize=1)
def setup_logging() -> None:
    """Cloud Logging JSON on stdout, with the process's secrets registered for redaction. Once."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.google_cloud_project)
    register_secret(settings.gemini_api_key.get_secret_value())
    register_secret(settings.poller_token.get_secret_value())
    register_secret(settings.webhook_signing_secret.get_secret_value())


@lru_cache(maxsize=1)
def context() -> Context:
    """The process's context. Functions call it per invocation; clients are created on the first call."""
    setup_logging()
    return build_context(get_settings())


@lru_cache(maxsize=1)
def context_for_webhook() -> Outbox:
    """The webhook only hands batches on: a publisher and the settings, no store, no provider, no key."""
    from google.cloud import pubsub_v1

    from shared.adapters.pubsub_publisher import PubSubPublisher

    settings = get_settings()
    return Outbox(settings=settings, publisher=PubSubPublisher(pubsub_v1.PublisherClient(), settings.google_cloud_project))
