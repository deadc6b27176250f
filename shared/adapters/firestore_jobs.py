"""The job repository over Firestore (one document per job, id = job id).

Reads of due jobs use one single-field range query on `next_poll_at` (set only while a job needs the
poller), served by Firestore's automatic single-field index. The jobs list by state uses the composite
index (state, created_at desc) that `infra/terraform` declares.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.domain.jobs import Job, JobState
from shared.errors import NotFound, TransientError
from shared.ports import JobRepository

__all__ = ["FirestoreJobRepository"]

T = TypeVar("T")

_CONTENTION_ROUNDS = 12
# The client raises ValueError once its own attempts at an aborted transaction are exhausted.
_CONTENDED = (ValueError, gexc.Aborted)
_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted, gexc.TooManyRequests)


def _to_document(job: Job) -> dict[str, Any]:
    # Python mode keeps datetimes as datetimes (Firestore timestamps, so `next_poll_at` is range-queryable);
    # enums are str subclasses and are stored as their values.
    return _plain(job.model_dump(mode="python"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # StrEnum -> plain str
    return value


def _job(snapshot: firestore.DocumentSnapshot) -> Job:
    job = Job.model_validate(snapshot.to_dict())
    job._revision = snapshot.update_time
    return job


class FirestoreJobRepository(JobRepository):
    def __init__(self, client: firestore.Client, collection: str):
        self._client = client
        self._collection = client.collection(collection)

    def _ref(self, job_id: str) -> firestore.DocumentReference:
        return self._collection.document(job_id)

    def create(self, job: Job) -> tuple[Job, bool]:
        try:
            job._revision = self._ref(job.job_id).create(_to_document(job)).update_time
            return job, True
        except gexc.Conflict:
            stored = self.get(job.job_id)
            if stored is None:  # deleted in between: try once more
                return self.create(job)
            return stored, False
        except _TRANSIENT as exc:
            raise TransientError(f"Firestore unavailable creating job {job.job_id}: {type(exc).__name__}") from exc

    def get(self, job_id: str) -> Job | None:
        try:
            snapshot = self._ref(job_id).get()
        except _TRANSIENT as exc:
            raise TransientError(f"Firestore unavailable reading job {job_id}: {type(exc).__name__}") from exc
        return _job(snapshot) if snapshot.exists else None

    def replace_if_unchanged(self, job: Job) -> bool:
        if job._revision is None:
            raise ValueError(f"job {job.job_id} was not read from this repository")
        option = self._client.write_option(last_update_time=job._revision)
        try:
            # update() of every top-level field replaces the document; unlike set(), it takes a precondition.
            result = self._ref(job.job_id).update(_to_document(job), option=option)
        except (gexc.FailedPrecondition, gexc.NotFound):
            return False
        except _TRANSIENT as exc:
            raise TransientError(f"Firestore unavailable writing job {job.job_id}: {type(exc).__name__}") from exc
        job._revision = result.update_time
        return True

    def update(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T]:
        ref = self._ref(job_id)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> tuple[Job, T]:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                raise NotFound(f"no job {job_id}")
            job = _job(snapshot)
            before = _to_document(job)
            result = change(job)
            after = _to_document(job)
            if after != before:
                transaction.set(ref, after)
                job._revision = None  # known only once the transaction commits: read it again to replace it
            return job, result

        # Firestore retries an aborted transaction at once; under contention (several deliveries of one
        # event at the same moment) that is not enough, so back off with jitter between rounds.
        delay = 0.05
        for _ in range(_CONTENTION_ROUNDS):
            try:
                return run(self._client.transaction(max_attempts=5))
            except _CONTENDED:
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 2.0)
            except _TRANSIENT as exc:
                raise TransientError(f"Firestore unavailable updating job {job_id}: {type(exc).__name__}") from exc
        raise TransientError(f"job {job_id} is too contended to update now")

    def due(self, now: datetime, limit: int) -> list[Job]:
        query = (
            self._collection.where(filter=FieldFilter("next_poll_at", "<=", now))
            .order_by("next_poll_at")
            .limit(limit)
        )
        try:
            return [_job(doc) for doc in query.stream()]
        except _TRANSIENT as exc:
            raise TransientError(f"Firestore unavailable listing due jobs: {type(exc).__name__}") from exc

    def list(
        self, *, state: JobState | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[list[Job], str | None]:
        query = self._collection
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state.value))
        # __name__ in the same direction as created_at: the (state, created_at desc) index serves it.
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.DESCENDING)
        if after:
            cursor = self._ref(after).get()
            if cursor.exists:
                query = query.start_after(cursor)
        docs = list(query.limit(limit + 1).stream())
        jobs = [_job(d) for d in docs[:limit]]
        next_token = jobs[-1].job_id if len(docs) > limit else None
        return jobs, next_token
