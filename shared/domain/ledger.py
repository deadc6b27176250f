"""The capacity ledger of one provider's model: what may be in flight, what is, and what it has learned.

A provider caps the tokens enqueued over all active batches of a model, the active batches of a project,
and the file storage they use. The real caps are opaque (a setting can only be an upper guess) and shared
with anything else in the project. The ledger keeps the pipeline inside them:

- A shard reserves its estimated tokens (and one batch, and its files' bytes) before its create, and holds
  them while a batch may exist; tokens and the batch are released when the batch ends, the file bytes when
  the shard's results are written (its files deleted). Held tokens never exceed `limit`, held batches never
  exceed `batch_limit`, held file bytes never exceed `file_limit`.
- A create refused with 429 despite the ledger teaches it: the limit drops to what the others held at that
  moment (the real cap lies below what was asked), and that level is remembered as a ceiling for a while.
  After successes, and only once no refusal is recent, the limit rises slowly back toward the setting.
- A shard refused while nothing else of the model was held is larger than the real cap (unless the provider
  accepted a batch that large alone recently: then the cap is shared and the ledger only holds off):
  `refused` says so, and the caller splits it. A shard larger than the current limit is split before it
  is tried.
- Every hold is a reservation, with an id its shard carries too: only a release naming it frees it, so a
  worker acting late (a refusal crossing a new admission, two admitters crossing, a reconciliation deciding
  on a stale read) never frees capacity a batch now uses. A reservation its shard never took (an admitter
  that died or lost the race) is reclaimed by reconciliation once a lease old.
- `virtual_time` orders the queue fairly (start-time fair queueing by tokens): a job's shards are keyed from
  the virtual time when it arrived, plus the tokens of its shards before them, so a small job arriving
  behind a huge one of the same priority waits for about one of the huge job's shards, not for all of them.

Pure logic: the repository stores a `Ledger` as one document and applies these methods in transactions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

__all__ = ["Admission", "Hold", "Ledger", "holder_id"]

#: How long a refused level stays a ceiling: users report the live cap recovers in 15-20 minutes.
CEILING_SECONDS = 30 * 60
#: After a refusal, the limit rises at most this often, by this factor, while creates succeed.
RAISE_SECONDS = 5 * 60
RAISE_FACTOR = 1.1
#: The learned limit never falls below this many tokens.
MIN_LIMIT = 1
#: After a refusal, nothing more is tried for this long unless capacity frees meanwhile (no hammering).
HOLD_OFF_SECONDS = 60
#: How long a batch accepted alone vouches for its size: a refusal alone no larger is the shared cap, not size.
#: (Each such refusal halves what is vouched for, so refusals that persist still end in a split.)
ACCEPTED_MEMORY_SECONDS = 6 * 3600
_THROUGHPUT_WEIGHT = 0.3  # exponential moving average of released tokens per second


class Admission(StrEnum):
    ADMITTED = "admitted"  # capacity reserved now, under a new reservation id
    WAIT = "wait"  # no room now; it keeps its place in the queue
    TOO_LARGE = "too_large"  # larger than the limit even with nothing else held: split it


def holder_id(job_id: str, shard: int, reservation: str) -> str:
    """A hold's key: one per reservation, so two admissions of one shard crossing are two holds (counted
    twice for a moment: the safe side) and neither can drop the other's."""
    return f"{job_id}/{shard}#{reservation}"


class Hold(BaseModel):
    job_id: str
    shard: int
    reservation: str  # the id the shard carries: only a release naming it frees the hold
    tokens: int = 0  # enqueued tokens, while a batch may exist
    batch: bool = False  # counts as an active batch
    file_bytes: int = 0  # provider file storage, until the shard's files are deleted
    since: datetime


class Ledger(BaseModel):
    key: str
    limit: int | None = None  # configured enqueued-token cap; None: none
    batch_limit: int | None = None
    file_limit: int | None = None
    learned_limit: int | None = None  # the cap learned from refusals, below `limit`
    ceiling: int | None = None  # a level refused recently: not probed above until `ceiling_until`
    ceiling_until: datetime | None = None
    raised_at: datetime | None = None
    refused_at: datetime | None = None
    hold_off_until: datetime | None = None  # a rate limit's Retry-After, or a back-off after a refusal
    accepted_alone: int = 0  # the largest batch (tokens) the provider accepted recently...
    accepted_at: datetime | None = None  # ...and when: a refusal of no more than that is not about size
    holds: dict[str, Hold] = Field(default_factory=dict)
    # Files the provider keeps until they expire (results it refuses to delete): bytes by the hour they go,
    # so the document stays small however many shards ended in the last two days.
    kept_files: dict[str, int] = Field(default_factory=dict)
    virtual_time: float = 0.0
    reservations: int = 0  # reservation ids handed out
    creates: int = 0
    refusals: int = 0
    splits: int = 0
    released_tokens: int = 0
    last_release_at: datetime | None = None
    throughput: float | None = None  # tokens per second finished, recently
    updated_at: datetime | None = None

    # -- what is held -------------------------------------------------------------------------

    @property
    def tokens_held(self) -> int:
        return sum(h.tokens for h in self.holds.values())

    @property
    def batches_held(self) -> int:
        return sum(1 for h in self.holds.values() if h.batch)

    @property
    def file_bytes_held(self) -> int:
        return sum(h.file_bytes for h in self.holds.values()) + sum(self.kept_files.values())

    @property
    def effective_limit(self) -> int | None:
        limits = [x for x in (self.limit, self.learned_limit) if x is not None]
        return min(limits) if limits else None

    def configure(self, limit: int | None, batch_limit: int | None, file_limit: int | None) -> None:
        """Take the configured caps (settings may change between deployments; what was learned stays)."""
        self.limit, self.batch_limit, self.file_limit = limit, batch_limit, file_limit
        if self.learned_limit is not None and limit is not None and self.learned_limit >= limit:
            self.learned_limit = None

    def _hold_of(self, job_id: str, shard: int, reservation: str | None) -> Hold | None:
        return self.holds.get(holder_id(job_id, shard, reservation)) if reservation is not None else None

    # -- admission ----------------------------------------------------------------------------

    def admit(self, job_id: str, shard: int, tokens: int, file_bytes: int, fair_key: float,
              now: datetime, *, splittable: bool = True) -> tuple[Admission, str | None]:
        """Reserve capacity for a shard's batch, if it fits now; returns the outcome and the new reservation
        id (the shard carries it; a release must name it). A shard over the limit is TOO_LARGE (split it);
        one that cannot be split (one item) is tried alone."""
        if self._holding_off(now):
            return Admission.WAIT, None
        limit = self.effective_limit
        if limit is not None and tokens > limit:
            if splittable:
                return Admission.TOO_LARGE, None
            if self.tokens_held:
                return Admission.WAIT, None
            limit = tokens
        fits = (
            (limit is None or self.tokens_held + tokens <= limit)
            and (self.batch_limit is None or self.batches_held < self.batch_limit)
            and (self.file_limit is None or self.file_bytes_held + file_bytes <= self.file_limit)
        )
        if not fits:
            return Admission.WAIT, None
        self.reservations += 1
        reservation = f"r{self.reservations}"
        self.holds[holder_id(job_id, shard, reservation)] = Hold(job_id=job_id, shard=shard, reservation=reservation, tokens=tokens, batch=True,
                               file_bytes=file_bytes, since=now)
        self.virtual_time = max(self.virtual_time, fair_key)
        self.updated_at = now
        return Admission.ADMITTED, reservation

    def created(self, job_id: str, shard: int, reservation: str | None, now: datetime) -> None:
        """A create went through: remember the size accepted alone, and after a quiet while raise a learned
        limit a little."""
        self.creates += 1
        self.updated_at = now
        hold = self._hold_of(job_id, shard, reservation)
        if hold is not None and self.tokens_held == hold.tokens and hold.tokens > self._recently_accepted(now):
            self.accepted_alone, self.accepted_at = hold.tokens, now
        if self.learned_limit is None:
            return
        if self.ceiling_until is not None and now < self.ceiling_until:
            return
        if self.raised_at is not None and (now - self.raised_at).total_seconds() < RAISE_SECONDS:
            return
        raised = int(self.learned_limit * RAISE_FACTOR) + 1
        self.learned_limit = None if self.limit is not None and raised >= self.limit else raised
        self.raised_at = now

    def _recently_accepted(self, now: datetime) -> int:
        if self.accepted_at is None or (now - self.accepted_at).total_seconds() > ACCEPTED_MEMORY_SECONDS:
            return 0
        return self.accepted_alone

    def refused(self, job_id: str, shard: int, reservation: str | None, tokens: int, now: datetime) -> bool:
        """A create of `tokens` was refused for capacity although the ledger admitted it. Releases the
        shard's hold (if it is still this reservation's) and learns a lower limit. True when nothing else was
        held and the provider has not accepted a batch this large alone recently: the shard is over the
        real cap (split it). Refused alone at a size it took recently, the cap is shared with others in the
        project: the ledger only holds off a while."""
        hold = self._hold_of(job_id, shard, reservation)
        if hold is not None:
            del self.holds[holder_id(job_id, shard, hold.reservation)]
        others = self.tokens_held
        self.refusals += 1
        self.updated_at = now
        self.raised_at = now
        self.refused_at = now
        if others == 0:
            if 0 < tokens <= self._recently_accepted(now):
                self.hold_off_until = now + timedelta(seconds=HOLD_OFF_SECONDS)
                self.accepted_alone //= 2
                return False
            self.learned_limit = max(MIN_LIMIT, tokens // 2)
            self.splits += 1
            return True
        self.learned_limit = max(MIN_LIMIT, others)
        self.ceiling = others + tokens
        self.ceiling_until = now + timedelta(seconds=CEILING_SECONDS)
        return False

    def rate_limited(self, job_id: str, shard: int, reservation: str | None, now: datetime, seconds: float) -> None:
        """A create was refused with a Retry-After: a rate limit, not the cap. Release the shard's hold and
        ask nothing more until then; the limit stays as it is."""
        hold = self._hold_of(job_id, shard, reservation)
        if hold is not None:
            del self.holds[holder_id(job_id, shard, hold.reservation)]
        self.refusals += 1
        self.hold_off_until = now + timedelta(seconds=seconds)
        self.updated_at = now

    def _holding_off(self, now: datetime) -> bool:
        """Just refused, and nothing freed since: wait a little before asking again (or as long as a rate
        limit asked)."""
        if self.hold_off_until is not None and now < self.hold_off_until:
            return True
        if self.refused_at is None or (now - self.refused_at).total_seconds() >= HOLD_OFF_SECONDS:
            return False
        return self.last_release_at is None or self.last_release_at <= self.refused_at

    def too_large(self, tokens: int, now: datetime) -> None:
        """A shard is being split without a try, because it exceeds the limit."""
        self.splits += 1
        self.updated_at = now

    # -- release (each names the reservation: a stale release frees nothing) -----------------------

    def batch_ended(self, job_id: str, shard: int, reservation: str | None, now: datetime, *,
                    keep_files: bool = True) -> None:
        """The shard's batch ended (any terminal state): its tokens and batch slot are free. Its file bytes
        stay held until its files are deleted, unless `keep_files` is False."""
        hold = self._hold_of(job_id, shard, reservation)
        if hold is None:
            return
        if hold.tokens:
            self._note_finished(hold.tokens, now)
        hold.tokens = 0
        hold.batch = False
        if not keep_files or hold.file_bytes == 0:
            del self.holds[holder_id(job_id, shard, hold.reservation)]
        self.updated_at = now

    def release(self, job_id: str, shard: int, reservation: str | None, now: datetime) -> None:
        """Everything the shard holds is free (its files are deleted, or it never got a batch)."""
        self._drop(job_id, shard, reservation, now)

    def _drop(self, job_id: str, shard: int, reservation: str | None, now: datetime) -> Hold | None:
        """Remove the reservation's hold (its tokens count as finished); returns it, None if it is gone."""
        hold = self._hold_of(job_id, shard, reservation)
        if hold is None:
            return None
        del self.holds[holder_id(job_id, shard, hold.reservation)]
        if hold.tokens:
            self._note_finished(hold.tokens, now)
        self.updated_at = now
        return hold

    def files_kept_until(self, job_id: str, shard: int, reservation: str | None, expiry: datetime,
                         now: datetime) -> None:
        """The shard is done but the provider keeps its files (they expire on their own): their bytes stay
        counted, in the bucket of the hour they expire, until `expire` frees them."""
        hold = self._drop(job_id, shard, reservation, now)
        if hold is not None and hold.file_bytes:
            bucket = (expiry.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).isoformat()
            self.kept_files[bucket] = self.kept_files.get(bucket, 0) + hold.file_bytes

    def expire(self, now: datetime) -> int:
        """Free the kept files' bytes whose hour has passed; returns how many hours were freed."""
        gone = [hour for hour in self.kept_files if datetime.fromisoformat(hour) <= now]
        for hour in gone:
            del self.kept_files[hour]
        if gone:
            self.updated_at = now
        return len(gone)

    def _note_finished(self, tokens: int, now: datetime) -> None:
        if self.last_release_at is not None:
            elapsed = max((now - self.last_release_at).total_seconds(), 1.0)
            rate = tokens / elapsed
            self.throughput = rate if self.throughput is None else (
                _THROUGHPUT_WEIGHT * rate + (1 - _THROUGHPUT_WEIGHT) * self.throughput)
        self.released_tokens += tokens
        self.last_release_at = now

    # -- for operators ------------------------------------------------------------------------

    def seconds_until(self, tokens_ahead: int) -> float | None:
        """Roughly when work behind `tokens_ahead` queued tokens starts, at the recent pace; None unknown."""
        limit = self.effective_limit
        backlog = self.tokens_held + tokens_ahead - (limit or 0)
        if backlog <= 0:
            return 0.0
        if not self.throughput:
            return None
        return backlog / self.throughput

    def usage(self) -> dict[str, int | float | None]:
        return {
            "tokens_held": self.tokens_held, "limit": self.limit, "effective_limit": self.effective_limit,
            "batches_held": self.batches_held, "batch_limit": self.batch_limit,
            "file_bytes_held": self.file_bytes_held, "file_limit": self.file_limit,
            "refusals": self.refusals, "creates": self.creates, "splits": self.splits,
        }
