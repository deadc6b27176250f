"""Settings: read from the environment in one place (`Settings()`), at call time, never at import.

Every field is an environment variable of the same name in upper case (`INPUT_BUCKET`, ...). The README's
configuration reference lists them; `tests/unit/test_config.py` keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.domain.jobs import ShardMode
from shared.domain.options import DEFAULT_MODEL, JobOptions, TaskType

__all__ = ["Settings", "get_settings"]

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # -- where things are -------------------------------------------------------------------
    google_cloud_project: str = "local-project"
    input_bucket: str = "embeddings-input"
    input_prefix: str = "incoming/"
    output_bucket: str = "embeddings-output"
    output_prefix: str = "embeddings/"
    jobs_collection: str = "embedding_jobs"
    events_topic: str = "embedding-events"  # public completion events
    complete_topic: str = "embedding-complete"  # internal: the poller hands finished jobs to `complete`

    # -- the Gemini API -----------------------------------------------------------------------
    gemini_api_base_url: str = "https://generativelanguage.googleapis.com"
    gemini_api_key: SecretStr = SecretStr("")
    gemini_timeout_seconds: float = 60.0
    gemini_max_retries: int = 5

    # -- defaults of the per-file options ------------------------------------------------------
    default_model: str = DEFAULT_MODEL
    default_task_type: TaskType = TaskType.RETRIEVAL_DOCUMENT
    default_output_dimensionality: int = 768
    default_priority: int = 0
    default_chunk_size: int = 512
    default_chunk_overlap: int = 64

    # -- sharding ---------------------------------------------------------------------------------
    max_requests_per_batch: int = 50_000
    # Inline batches answer inside the operation and (reported for the live API: python-genai #2008,
    # js-genai #1191) may drop the request metadata that carries each key; a responses file always keys
    # its lines and streams. So shards go through the Files API unless this allows small inline ones.
    inline_max_requests: int = 0
    inline_max_bytes: int = 18 * MIB  # the API's inline limit is 20 MB for the whole request
    file_max_bytes: int = 1900 * MIB  # the API's input-file limit is 2 GB
    max_record_bytes: int = 1 * MIB  # one JSONL line / CSV row; longer ones are reported and skipped
    max_decompressed_bytes: int = 20 * 1024 * MIB  # gzip bomb guard

    # -- retries and deadlines --------------------------------------------------------------------
    max_batch_attempts: int = 2  # batches per shard when the provider fails or expires one
    max_item_attempts: int = 3  # tries per item whose own request failed
    job_deadline_hours: float = 72.0
    submit_stale_minutes: float = 30.0  # a SUBMITTING job untouched this long is resumed by the poller
    complete_stale_minutes: float = 15.0  # a COMPLETING job untouched this long is handed over again
    lease_seconds: float = 540.0  # a little over the functions' timeout

    # -- the poller -------------------------------------------------------------------------------
    poll_max_jobs: int = 100
    poll_time_budget_seconds: float = 50.0
    poll_min_interval_seconds: float = 2.0
    poll_max_interval_seconds: float = 600.0
    poller_token: SecretStr = SecretStr("")  # local stack: a shared bearer token
    poller_audience: str = ""  # cloud: the OIDC audience (the poller's URL)
    poller_invoker_email: str = ""  # cloud: the scheduler's service account

    # -- monitoring -------------------------------------------------------------------------------
    success_rate_alert_threshold: float = 95.0
    keep_staging: bool = False  # keep the staged requests after a job ends (for debugging)

    # -- prices, USD per million input tokens (gemini-embedding-001, September 2025) ---------------
    price_batch_per_million: float = 0.075
    price_interactive_per_million: float = 0.15

    log_level: str = Field("INFO")

    def shard_mode(self, requests: int, size: int) -> ShardMode:
        """INLINE when a shard of `requests` requests and `size` bytes fits the inline limits, else FILE."""
        fits = requests <= self.inline_max_requests and size <= self.inline_max_bytes
        return ShardMode.INLINE if fits else ShardMode.FILE

    def default_options(self) -> JobOptions:
        return JobOptions(
            model=self.default_model,
            task_type=self.default_task_type,
            output_dimensionality=self.default_output_dimensionality,
            priority=self.default_priority,
            chunk_size=self.default_chunk_size,
            chunk_overlap=self.default_chunk_overlap,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use (functions reuse them across invocations)."""
    return Settings()
