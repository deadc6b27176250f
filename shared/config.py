"""Settings: read from the environment in one place (`Settings()`), at call time, never at import.

Every field is an environment variable of the same name in upper case (`INPUT_BUCKET`, ...). The README's
configuration reference lists them; `tests/unit/test_settings.py` keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.domain.options import JobOptions, normalize_task_type

__all__ = ["Settings", "get_settings"]

MIB = 1024 * 1024
GIB = 1024 * MIB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # -- where things are -------------------------------------------------------------------
    google_cloud_project: str = "local-project"
    input_bucket: str = "embeddings-input"
    input_prefix: str = "incoming/"
    output_bucket: str = "embeddings-output"
    output_prefix: str = "embeddings/"
    jobs_collection: str = "embedding_jobs"  # each job's shards in its subcollection `<jobs_collection>_shards`
    ledgers_collection: str = "embedding_ledgers"
    events_topic: str = "embedding-events"  # public completion events
    complete_topic: str = "embedding-complete"  # internal: a shard to write, or a job to finish
    stage_topic: str = "embedding-stage"  # internal: a job whose input is still to stage
    poll_topic: str = "embedding-poll"  # internal: the poller's tick fans out due work to its workers

    # -- providers --------------------------------------------------------------------------
    provider: str = "gemini"  # the default provider of a job (`gemini` or `vertex`)
    providers: str = ""  # also configured, selectable per file (comma-separated); the default always is
    gemini_api_base_url: str = "https://generativelanguage.googleapis.com"
    gemini_api_key: SecretStr = SecretStr("")
    gemini_timeout_seconds: float = 60.0
    gemini_max_retries: int = 5

    # Vertex AI batch prediction (PROVIDER=vertex): IAM, no key; inputs and outputs in Cloud Storage.
    vertex_project: str = ""  # empty: GOOGLE_CLOUD_PROJECT
    vertex_location: str = "us-central1"  # gemini-embedding-001's region; gemini-embedding-2 runs in global/us/eu
    vertex_model_locations: str = ""  # per model, e.g. "gemini-embedding-2=eu"
    vertex_api_base_url: str = ""  # empty: Google's endpoints; locally the emulator
    vertex_access_token: SecretStr = SecretStr("")  # local emulator only; empty: Application Default Credentials
    vertex_staging_prefix: str = ""  # empty: gs://OUTPUT_BUCKET/OUTPUT_PREFIX_staging/_vertex/inputs/
    vertex_output_prefix: str = ""  # empty: .../_vertex/outputs/
    vertex_labels: str = ""  # extra job labels, k=v,... (cost attribution)
    vertex_timeout_seconds: float = 60.0
    vertex_max_retries: int = 5

    # -- defaults of the per-file options ------------------------------------------------------
    default_model: str = "gemini-embedding-001"
    default_task_type: str = "RETRIEVAL_DOCUMENT"
    default_output_dimensionality: int = 768
    default_priority: int = 0
    default_chunk_size: int = 512
    default_chunk_overlap: int = 64

    # -- shards ---------------------------------------------------------------------------------
    # A shard is one batch: cut at whichever comes first. Tokens: a batch's tokens count against the
    # enqueued-tokens quota while it runs, so a shard must be well below it (Tier 1: 500k for the model).
    max_tokens_per_batch: int = 100_000
    max_requests_per_batch: int = 50_000  # and never above the provider's own row limit
    file_max_bytes: int = 1900 * MIB  # and never above the provider's own input limit
    # Ids, titles and metadata of one shard: `complete` holds them in memory while it writes the shard.
    max_shard_record_bytes: int = 64 * MIB
    max_record_bytes: int = 1 * MIB  # one JSONL line / CSV row; longer ones are reported and skipped
    max_decompressed_bytes: int = 20 * 1024 * MIB  # gzip bomb guard

    # -- capacity (the ledger; empty: the provider's published quota for the model) ------------------
    enqueued_tokens_limit: int | None = None  # Tier 1: 500000, Tier 2: 5000000, Tier 3: 10000000
    concurrent_batches_limit: int | None = None  # 100 per project
    file_storage_limit_bytes: int | None = None  # 20 GB per project (Files API)

    # -- reuse ------------------------------------------------------------------------------------------
    reuse_embeddings: bool = True  # take unchanged passages' embeddings from the cache (a file may say reuse=false)
    cache_collection: str = "embedding_cache"  # Firestore collection of the cache (one document per content key)
    cache_ttl_days: float = 90.0  # a cache entry expires this long after it was last written (Firestore TTL)

    # -- retries and deadlines --------------------------------------------------------------------
    max_batch_attempts: int = 2  # batches per shard when the provider fails or expires one
    max_item_attempts: int = 3  # tries per item whose own request failed
    job_deadline_hours: float = 72.0
    submit_stale_minutes: float = 30.0  # a SUBMITTING job untouched this long is handed back to staging
    complete_stale_minutes: float = 15.0  # a shard or job left unwritten this long is handed over again
    lease_seconds: float = 540.0  # a little over the functions' timeout
    # One invocation stages for at most this long, then checkpoints and hands the rest to the next one.
    stage_budget_seconds: float = 300.0
    # One `complete` invocation writes at most this many items of a shard; a continuation writes the rest.
    complete_max_rows: int = Field(50_000, ge=1)

    # -- the poller -------------------------------------------------------------------------------
    poll_max_jobs: int = 500  # due jobs per tick
    poll_max_shards: int = 1000  # due shards per tick
    poll_group_size: int = 20  # due items per message to a poll worker
    poll_time_budget_seconds: float = 50.0
    poll_min_interval_seconds: float = 2.0
    poll_max_interval_seconds: float = 600.0
    admit_max_per_tick: int = 200  # shards admitted per ledger per tick
    reconcile_max_objects: int = 2000  # input objects listed per tick by the reconciler
    reconcile_grace_minutes: float = 10.0  # an upload this recent is left to its own event
    reconcile_horizon_hours: float = 72.0  # uploads older than this are never submitted by the reconciler
    poller_token: SecretStr = SecretStr("")  # local stack: a shared bearer token
    poller_audience: str = ""  # cloud: the OIDC audience (the poller's URL)
    poller_invoker_email: str = ""  # cloud: the scheduler's service account
    webhook_signing_secret: SecretStr = SecretStr("")  # Standard Webhooks secret (whsec_...) of batch webhooks

    # -- monitoring -------------------------------------------------------------------------------
    success_rate_alert_threshold: float = 95.0
    keep_staging: bool = False  # keep the staged records after a job ends (for debugging)

    # -- prices, USD per million input tokens (empty: the provider's published price) --------------
    price_batch_per_million: float | None = None
    price_interactive_per_million: float | None = None

    log_level: str = Field("INFO")

    def enabled_providers(self) -> list[str]:
        names = [self.provider] + [p.strip().lower() for p in self.providers.split(",") if p.strip()]
        return list(dict.fromkeys(names))

    def default_options(self) -> JobOptions:
        return JobOptions(
            provider=self.provider,
            model=self.default_model,
            task_type=normalize_task_type(self.default_task_type),
            output_dimensionality=self.default_output_dimensionality,
            priority=self.default_priority,
            chunk_size=self.default_chunk_size,
            chunk_overlap=self.default_chunk_overlap,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use (functions reuse them across invocations)."""
    return Settings()
