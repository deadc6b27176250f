"""The clients a command needs, built on first use from its `Config`, and the translation of their
errors into one-line `CliError`s.

Locally the Google clients find the emulators through the *_EMULATOR_HOST variables (set by
`Config.client_environment` for the command's duration); before the first call to an emulator its port is
tried, so a stopped stack is reported at once instead of after the clients' retry deadlines. In the cloud
they use Application Default Credentials.
"""

from __future__ import annotations

import socket
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from embedpipe.config import Config
from embedpipe.errors import CliError, JobNotFound, Refused, Unreachable
from shared.domain.jobs import Job

__all__ = ["Services", "first_line", "translate_error"]

_SERVICE_OF = {
    "FIRESTORE_EMULATOR_HOST": "the Firestore emulator",
    "STORAGE_EMULATOR_HOST": "the Cloud Storage emulator",
    "PUBSUB_EMULATOR_HOST": "the Pub/Sub emulator",
}


def _host_port(value: str) -> tuple[str, int]:
    parts = urlsplit(value if "//" in value else f"//{value}")
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def check_emulator(config: Config, key: str) -> None:
    """Raise `Unreachable` when the emulator named by `key` is configured but does not accept connections."""
    value = config.get(key)
    if not value:
        return
    host, port = _host_port(value)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        raise Unreachable(f"cannot reach {_SERVICE_OF[key]} at {value} ({key} from {config.source}): "
                          "is the local stack running? Start it with `make up`") from None


class Services:
    """Lazily built clients over one configuration. Use inside `config.client_environment()`."""

    def __init__(self, config: Config, **given: Any):
        """`given` replaces clients by name (`jobs=FakeJobRepository()`): the seam for tests."""
        self.config = config
        self.__dict__.update(given)

    @cached_property
    def settings(self):
        return self.config.settings()

    @cached_property
    def firestore(self):
        check_emulator(self.config, "FIRESTORE_EMULATOR_HOST")
        from google.cloud import firestore

        return firestore.Client(project=self.config.project)

    @cached_property
    def jobs(self):
        from shared.adapters.firestore_jobs import FirestoreJobRepository

        return FirestoreJobRepository(self.firestore, self.settings.jobs_collection)

    @cached_property
    def storage(self):
        check_emulator(self.config, "STORAGE_EMULATOR_HOST")
        from google.cloud import storage

        return storage.Client(project=self.config.project)

    @cached_property
    def blobs(self):
        from shared.adapters.gcs_blobs import GcsBlobStore

        return GcsBlobStore(self.storage)

    @cached_property
    def subscriber(self):
        check_emulator(self.config, "PUBSUB_EMULATOR_HOST")
        from google.cloud import pubsub_v1

        return pubsub_v1.SubscriberClient()

    @cached_property
    def ledgers(self):
        from shared.adapters.firestore_jobs import FirestoreLedgerRepository

        return FirestoreLedgerRepository(self.firestore, self.settings.ledgers_collection)

    def provider(self, name: str):
        """The job's provider, for its interactive endpoint (queries)."""
        from shared.bootstrap import build_providers

        if name == "gemini":
            self.config.require("GEMINI_API_KEY", "the interactive embedding endpoint")
        settings = self.settings.model_copy(update={"provider": name, "providers": "", "gemini_max_retries": 2,
                                                    "gemini_timeout_seconds": 30.0})
        return build_providers(settings)[name]

    def describe(self, job_id: str) -> dict[str, Any]:
        """One job as operators see it (`shared.views.describe_job`), or `JobNotFound`."""
        from datetime import UTC, datetime

        from shared.views import describe_job

        view = describe_job(self.jobs, self.ledgers, job_id, datetime.now(UTC))
        if view is None:
            self.job(job_id)  # raises JobNotFound, naming where it looked
        return view

    def progress(self, job: Job) -> float:
        """Percent done, counting items done in the job's running batches too."""
        from shared.domain.jobs import SHARD_IN_FLIGHT

        if not job.active:
            return job.progress()
        running = self.jobs.shards(job.job_id, states=[s.value for s in SHARD_IN_FLIGHT])
        return job.progress(sum(s.items_done() for s in running))

    def output_files(self, job: Job) -> tuple[list[str], list[str]]:
        """The job's embeddings and Parquet files, as its manifest lists them."""
        import orjson

        with self.blobs.open_read(job.output.manifest) as stream:
            files = orjson.loads(stream.read())["files"]
        return [f["uri"] for f in files["embeddings"]], [f["uri"] for f in files["parquet"]]

    def job(self, job_id: str) -> Job:
        """The job, or `JobNotFound` naming where it was looked for."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id} in Firestore collection {self.settings.jobs_collection} "
                              f"of project {self.config.project}")
        return job

    def close(self) -> None:
        for name in ("firestore", "storage", "subscriber"):
            client = self.__dict__.get(name)
            if client is not None and hasattr(client, "close"):
                client.close()


def translate_error(exc: BaseException) -> CliError | None:
    """The one-line error of a client library's exception, or None if it is not one we know."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from shared.errors import PipelineError, TransientError
    from shared.gemini.errors import GeminiError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return Refused("no Google credentials: run `gcloud auth application-default login` (or set "
                       "GOOGLE_APPLICATION_CREDENTIALS); for the local stack run `make up`")
    if isinstance(exc, auth_exc.GoogleAuthError):
        return Refused(f"Google authentication failed: {first_line(exc)}")
    if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden | gexc.Unauthenticated | gexc.Unauthorized):
        return Refused(f"permission denied: {first_line(exc)}")
    if isinstance(exc, gexc.ServiceUnavailable | gexc.DeadlineExceeded | gexc.RetryError | gexc.GatewayTimeout):
        return Unreachable(f"a Google Cloud service did not answer: {first_line(exc)}")
    if isinstance(exc, gexc.GoogleAPICallError):
        return CliError(f"{type(exc).__name__}: {first_line(exc)}")
    if isinstance(exc, GeminiError):
        return Unreachable(f"the Gemini API: {first_line(exc)}")
    if isinstance(exc, TransientError):
        return Unreachable(first_line(exc))
    if isinstance(exc, PipelineError):
        return CliError(first_line(exc))
    if _is_httpx_transport_error(exc):
        return Unreachable(f"cannot reach {_url_of(exc)}: {first_line(exc) or type(exc).__name__}")
    if isinstance(exc, ConnectionError):
        return Unreachable(f"connection failed: {first_line(exc)}")
    return None


def _is_httpx_transport_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def _url_of(exc: Any) -> str:
    try:
        return str(exc.request.url)
    except (AttributeError, RuntimeError):
        return "the service"


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of the exception's message (at most `limit` characters), or its type's name."""
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0][:limit] if str(text).strip() else type(exc).__name__
