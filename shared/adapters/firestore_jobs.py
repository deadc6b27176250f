"""The job store over Firestore: one document per job, one per shard (in its job's subcollection
`<jobs collection>_shards`), one per capacity ledger, and small marker documents.

Queries, and the indexes they need (declared in `infra/terraform/firestore.tf`):
- due jobs: a range on `next_poll_at` (single-field index, automatic);
- due shards: a range on `next_poll_at` over the shards collection group (single-field index enabled
  for collection-group scope);
- a ledger's queue: `state ==`, `ledger ==`, ordered by `priority desc, fair_key, created_at` over the
  shards collection group (composite index);
- the shard of a batch: `batch_name ==` over the collection group (single-field, collection-group scope);
- jobs by state: `state ==` ordered by `created_at desc` (composite index).

Every method maps Firestore's errors in one place (`_mapped`): unavailable, aborted, deadline and quota
errors are `TransientError`; a document over the size limit or otherwise refused is `PermanentError`; a
stored document that no longer parses is `PermanentError` (CORRUPT_DOCUMENT) with the document's path.
Revisions are the documents' update times, as RFC 3339 text with nanoseconds.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from pydantic import ValidationError

from shared.domain.jobs import Job, JobState, Shard, ShardState, shard_doc_id
from shared.domain.ledger import Ledger
from shared.errors import NotFound, PermanentError, TransientError
from shared.ports import JobRepository, JobTx, LedgerRepository

__all__ = ["FirestoreJobRepository", "FirestoreLedgerRepository", "shards_collection"]

T = TypeVar("T")



def shards_collection(jobs_collection: str) -> str:
    """The id of each job's shards subcollection: named after the jobs collection, so the collection-group
    queries over shards (due, queued, by batch) see only this deployment's, when several share a database."""
    return f"{jobs_collection}_shards"

_CONTENTION_ROUNDS = 12
_GET_ALL_BATCH = 300
_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted,
              gexc.TooManyRequests, gexc.ResourceExhausted, gexc.Unknown, gexc.GatewayTimeout, gexc.BadGateway)
# Errors after which a write may or may not have happened: RetryError is the client's own retries running out.
_UNANSWERED = (*_TRANSIENT, gexc.RetryError)
_EXHAUSTED_TRANSACTION = "Failed to commit transaction"
_WRITES = "_writes"  # a ledger document's recent writes: token -> time (see FirestoreLedgerRepository.update)
_WRITES_KEPT = timedelta(minutes=3)


class _Contended(Exception):
    """A transaction that Firestore's own attempts could not commit: back off and try another round."""


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Firestore's errors, as the pipeline's: the one place they are mapped."""
    try:
        yield
    except (NotFound, PermanentError, TransientError, _Contended):
        raise
    except ValidationError as exc:
        raise PermanentError(f"{what}: the stored document is not valid ({exc.error_count()} errors: "
                             f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']})", code="CORRUPT_DOCUMENT") from None
    except gexc.InvalidArgument as exc:
        code = "DOCUMENT_TOO_LARGE" if "size" in str(exc).lower() or "too big" in str(exc).lower() else "INVALID_ARGUMENT"
        raise PermanentError(f"{what}: Firestore refused the write ({exc.message})", code=code) from exc
    except _UNANSWERED as exc:
        raise TransientError(f"Firestore unavailable ({what}): {type(exc).__name__}") from exc
    except ValueError as exc:
        if str(exc).startswith(_EXHAUSTED_TRANSACTION):
            raise _Contended(str(exc)) from exc
        raise
    except gexc.GoogleAPICallError as exc:  # permissions, configuration: a retry may succeed once fixed
        raise TransientError(f"Firestore error ({what}): {type(exc).__name__}: {exc.message}") from exc


def _to_document(model: Job | Shard | Ledger) -> dict[str, Any]:
    # Python mode keeps datetimes as datetimes (Firestore timestamps, so `next_poll_at` is range-queryable);
    # enums are str subclasses and are stored as their values.
    return _plain(model.model_dump(mode="python"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # StrEnum -> plain str
    return value


def _ledger(key: str, snapshot: Any) -> tuple[Ledger, dict[str, datetime]]:
    """The stored ledger (a new empty one if absent) and its recent writes (see FirestoreLedgerRepository.update)."""
    stored = snapshot.to_dict() or {}
    writes = stored.pop(_WRITES, None) or {}
    with _mapped(f"ledger {key}"):
        return (Ledger.model_validate(stored) if snapshot.exists else Ledger(key=key)), writes


def _revision(snapshot: Any) -> str | None:
    update_time = getattr(snapshot, "update_time", None)
    if update_time is None:
        return None
    if isinstance(update_time, DatetimeWithNanoseconds):
        return update_time.rfc3339()
    if hasattr(update_time, "ToJsonString"):  # a protobuf Timestamp (write results)
        return update_time.ToJsonString()
    return update_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _precondition(revision: str) -> DatetimeWithNanoseconds:
    return DatetimeWithNanoseconds.from_rfc3339(revision)


def _job(snapshot: Any) -> Job:
    with _mapped(f"job {snapshot.id}"):
        job = Job.model_validate(snapshot.to_dict())
    job._revision = _revision(snapshot)
    return job


def _shard(snapshot: Any) -> Shard:
    with _mapped(f"shard {snapshot.reference.path}"):
        shard = Shard.model_validate(snapshot.to_dict())
    shard._revision = _revision(snapshot)
    return shard


def _in_rounds(what: str, attempt: Callable[[], T]) -> T:
    """Under contention (several deliveries of one event at the same moment, shards of one job closing
    together, every function touching a model's ledger) a transaction Firestore could not commit, or a
    compare-and-set refused, is tried again after a jittered back-off."""
    delay, reason = 0.05, ""
    for _ in range(_CONTENTION_ROUNDS):
        try:
            with _mapped(what):
                return attempt()
        except _Contended as exc:
            reason = str(exc)
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 2.0)
    raise TransientError(f"{what} is too contended to update now (last: {reason})")


class FirestoreJobRepository(JobRepository):
    def __init__(self, client: firestore.Client, collection: str):
        self._client = client
        self._collection = client.collection(collection)
        self._markers = client.collection(f"{collection}_markers")
        self._shards_id = shards_collection(collection)

    def _ref(self, job_id: str) -> firestore.DocumentReference:
        return self._collection.document(job_id)

    def _shard_ref(self, job_id: str, index: int) -> firestore.DocumentReference:
        return self._ref(job_id).collection(self._shards_id).document(shard_doc_id(index))

    def _shards(self) -> Any:
        return self._client.collection_group(self._shards_id)

    # -- jobs ---------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        with _mapped(f"creating job {job.job_id}"):
            try:
                job._revision = _revision(self._ref(job.job_id).create(_to_document(job)))
                return job, True
            except gexc.Conflict:
                pass
        stored = self.get(job.job_id)
        if stored is None:  # deleted in between: try once more
            return self.create(job)
        return stored, False

    def get(self, job_id: str) -> Job | None:
        with _mapped(f"reading job {job_id}"):
            snapshot = self._ref(job_id).get()
        return _job(snapshot) if snapshot.exists else None

    def update(self, job_id: str, change: Callable[[JobTx], T], *, shards: Iterable[int] = ()) -> tuple[JobTx, T]:
        ref = self._ref(job_id)
        indices = list(shards)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> tuple[JobTx, T]:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                raise NotFound(f"no job {job_id}")
            read = {s.id: s for s in transaction.get_all([self._shard_ref(job_id, i) for i in indices])} if indices else {}
            tx = JobTx(job=_job(snapshot), shards={
                i: _shard(read[shard_doc_id(i)]) if shard_doc_id(i) in read and read[shard_doc_id(i)].exists else None
                for i in indices
            })
            before_job = _to_document(tx.job)
            before = {i: _to_document(s) if s else None for i, s in tx.shards.items()}
            result = change(tx)
            after_job = _to_document(tx.job)
            if after_job != before_job:
                transaction.set(ref, after_job)
                tx.job._revision = None  # known only once committed: read again to write over it
            for i, shard in tx.shards.items():
                if shard is not None and _to_document(shard) != before[i]:
                    transaction.set(self._shard_ref(job_id, i), _to_document(shard))
                    shard._revision = None
            for child in tx.added:
                transaction.create(self._shard_ref(job_id, child.index), _to_document(child))
            return tx, result

        return _in_rounds(f"job {job_id}", lambda: run(self._client.transaction(max_attempts=5)))

    def replace_if_unchanged(self, job: Job) -> bool:
        return self._replace(self._ref(job.job_id), job, f"job {job.job_id}")

    def _replace(self, ref: firestore.DocumentReference, doc: Job | Shard, what: str) -> bool:
        if doc._revision is None:
            raise ValueError(f"{what} was not read from this repository")
        option = self._client.write_option(last_update_time=_precondition(doc._revision))
        with _mapped(f"writing {what}"):
            try:
                # update() of every top-level field replaces the document; unlike set(), it takes a precondition.
                result = ref.update(_to_document(doc), option=option)
            except (gexc.FailedPrecondition, gexc.NotFound):
                return False
        doc._revision = _revision(result)
        return True

    def due(self, now: datetime, limit: int) -> list[Job]:
        query = (self._collection.where(filter=FieldFilter("next_poll_at", "<=", now))
                 .order_by("next_poll_at").limit(limit))
        with _mapped("listing due jobs"):
            return [_job(doc) for doc in query.stream()]

    def list(self, *, state: JobState | None = None, limit: int = 50, after: str | None = None
             ) -> tuple[list[Job], str | None]:
        query = self._collection
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state.value))
        # __name__ in the same direction as created_at: the (state, created_at desc) index serves it.
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.DESCENDING)
        with _mapped("listing jobs"):
            if after:
                cursor = self._ref(after).get()
                if cursor.exists:
                    query = query.start_after(cursor)
            docs = list(query.limit(limit + 1).stream())
        jobs = [_job(d) for d in docs[:limit]]
        return jobs, jobs[-1].job_id if len(docs) > limit else None

    def exist(self, job_ids: list[str]) -> set[str]:
        found: set[str] = set()
        with _mapped("reading jobs"):
            for start in range(0, len(job_ids), _GET_ALL_BATCH):
                refs = [self._ref(job_id) for job_id in job_ids[start:start + _GET_ALL_BATCH]]
                found.update(s.id for s in self._client.get_all(refs, field_paths=["job_id"]) if s.exists)
        return found

    # -- shards -------------------------------------------------------------------------------

    def get_shard(self, job_id: str, index: int) -> Shard | None:
        with _mapped(f"reading shard {job_id}/{index}"):
            snapshot = self._shard_ref(job_id, index).get()
        return _shard(snapshot) if snapshot.exists else None

    def shards(self, job_id: str, *, states: Iterable[str] | None = None, limit: int | None = None) -> Iterator[Shard]:
        query = self._ref(job_id).collection(self._shards_id)
        wanted = [str(s) for s in states] if states is not None else None
        if wanted is not None:
            query = query.where(filter=FieldFilter("state", "in", wanted))
        query = query.order_by("index")
        if limit is not None:
            query = query.limit(limit)
        with _mapped(f"listing shards of {job_id}"):
            for snapshot in query.stream():
                shard = _shard(snapshot)
                if wanted is None or shard.state.value in wanted:
                    yield shard

    def update_shard(self, job_id: str, index: int, change: Callable[[Shard], T]) -> tuple[Shard, T]:
        ref = self._shard_ref(job_id, index)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> tuple[Shard, T]:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                raise NotFound(f"no shard {job_id}/{index}")
            shard = _shard(snapshot)
            before = _to_document(shard)
            result = change(shard)
            after = _to_document(shard)
            if after != before:
                transaction.set(ref, after)
                shard._revision = None
            return shard, result

        return _in_rounds(f"shard {job_id}/{index}", lambda: run(self._client.transaction(max_attempts=5)))

    def replace_shard_if_unchanged(self, shard: Shard) -> bool:
        return self._replace(self._shard_ref(shard.job_id, shard.index), shard, f"shard {shard.job_id}/{shard.index}")

    def due_shards(self, now: datetime, limit: int) -> list[Shard]:
        query = self._shards().where(filter=FieldFilter("next_poll_at", "<=", now)).order_by("next_poll_at").limit(limit)
        with _mapped("listing due shards"):
            return [_shard(doc) for doc in query.stream()]

    def _queue(self, ledger: str) -> Any:
        return (self._shards().where(filter=FieldFilter("state", "==", ShardState.STAGED.value))
                .where(filter=FieldFilter("ledger", "==", ledger)))

    def waiting_shards(self, ledger: str, limit: int) -> list[Shard]:
        query = (self._queue(ledger).order_by("priority", direction=firestore.Query.DESCENDING)
                 .order_by("fair_key").order_by("created_at").limit(limit))
        with _mapped(f"reading the queue of {ledger}"):
            return [_shard(doc) for doc in query.stream()]

    def queue_ahead(self, ledger: str, priority: int, fair_key: float) -> tuple[int, int]:
        higher = self._queue(ledger).where(filter=FieldFilter("priority", ">", priority))
        same = (self._queue(ledger).where(filter=FieldFilter("priority", "==", priority))
                .where(filter=FieldFilter("fair_key", "<", fair_key)))
        shards = tokens = 0
        with _mapped(f"counting the queue of {ledger}"):
            for query in (higher, same):
                results = query.count(alias="n").sum("estimated_tokens", alias="t").get()
                values = {r.alias: r.value for row in results for r in row}
                shards += int(values.get("n") or 0)
                tokens += int(values.get("t") or 0)
        return shards, tokens

    def shard_of_batch(self, batch_name: str) -> Shard | None:
        query = self._shards().where(filter=FieldFilter("batch_name", "==", batch_name)).limit(1)
        with _mapped("finding a batch's shard"):
            found = [_shard(doc) for doc in query.stream()]
        return found[0] if found else None

    # -- markers ------------------------------------------------------------------------------

    def marker(self, name: str) -> dict:
        with _mapped(f"reading marker {name}"):
            snapshot = self._markers.document(name).get()
        return snapshot.to_dict() or {} if snapshot.exists else {}

    def set_marker(self, name: str, value: dict) -> None:
        with _mapped(f"writing marker {name}"):
            self._markers.document(name).set(value)


class FirestoreLedgerRepository(LedgerRepository):
    def __init__(self, client: firestore.Client, collection: str):
        self._client = client
        self._collection = client.collection(collection)

    def update(self, key: str, change: Callable[[Ledger], T]) -> tuple[Ledger, T]:
        """Compare-and-set, not a transaction: read, change, write only if the document is still the one
        read (its update time; `create` when there was none), else read again after a jittered back-off.
        The ledger is the one document every submit, create and batch end of a model touches; a
        transaction would hold its lock across the round trip (the Firestore emulator, which does not
        resolve lock conflicts, then stalls every contender until its 30 s lock timeout), while a
        precondition fails at once. A change that leaves the ledger as it was writes nothing.

        Applied once, whatever answer is lost: each write adds a token of its own to the document's
        recent writes (kept 3 minutes: longer than the client's own retries of a commit). A write whose
        outcome is unknown (an error in transit, the client's retry of an applied write refused by its own
        precondition, a failed read after it) is settled by the next round's read: if one of this call's
        tokens is there, that attempt's result is returned and the change is not applied again."""
        ref = self._collection.document(key)
        sent: dict[str, tuple[Ledger, T]] = {}

        def attempt() -> tuple[Ledger, T]:
            try:
                snapshot = ref.get()
            except _UNANSWERED as exc:
                if sent:  # a write of ours may have landed: only a read can tell
                    raise _Contended(f"ledger {key}: reading back an unanswered write failed") from exc
                raise
            ledger, writes = _ledger(key, snapshot)
            landed = next((token for token in writes if token in sent), None)
            if landed:
                return sent[landed]
            before = _to_document(ledger)
            result = change(ledger)
            after = _to_document(ledger)
            if snapshot.exists and after == before:
                return ledger, result
            now = datetime.now(UTC)
            token = uuid.uuid4().hex
            recent = {t: at for t, at in writes.items() if at > now - _WRITES_KEPT}
            document = {**after, _WRITES: {**recent, token: now}}
            sent[token] = (ledger, result)
            try:
                if snapshot.exists:
                    ref.update(document, option=self._client.write_option(last_update_time=snapshot.update_time))
                else:
                    ref.create(document)
            except (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound, *_UNANSWERED) as exc:
                # Refused by the precondition (another writer, or the client's retry of our own write),
                # or no answer: the next round's read settles it. AlreadyExists is a Conflict.
                raise _Contended(f"ledger {key}: {type(exc).__name__} on write") from exc
            return ledger, result

        return _in_rounds(f"ledger {key}", attempt)

    def get(self, key: str) -> Ledger | None:
        with _mapped(f"reading ledger {key}"):
            snapshot = self._collection.document(key).get()
            return _ledger(key, snapshot)[0] if snapshot.exists else None

    def list_keys(self) -> list[str]:
        with _mapped("listing ledgers"):
            return [ref.id for ref in self._collection.list_documents()]
