"""How a job is shown to operators (status API, CLI, dashboard): the document without its internals, and,
for one job, what its shards, its place in the queue and its ledger's capacity say.

Reads stay bounded whatever the job's size: one job, its shards in flight (the ledger bounds them), its
first waiting shard, two aggregate queries for its place in the queue, and its ledger.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from shared.domain.jobs import FINAL_SHARD_STATES, SHARD_IN_FLIGHT, Job, ShardState
from shared.ports import JobRepository, LedgerRepository

__all__ = ["describe_job", "job_view", "jobs_view"]

#: A job of at most this many shards lists them all; a larger one lists those not final only.
LISTED_SHARDS = 200
_OPEN = [s.value for s in ShardState if s not in FINAL_SHARD_STATES and s != ShardState.STAGED]


def job_view(job: Job, *, in_flight_done: int = 0) -> dict[str, Any]:
    view = job.model_dump(mode="json", exclude={"lease_owner", "lease_until"})
    view["counts"] = job.counts.to_dict()
    view["progress_percentage"] = job.progress(in_flight_done)
    view["success_rate"] = job.success_rate
    view["waited_seconds"] = _waited(job)
    return view


def jobs_view(jobs: JobRepository, found: list[Job]) -> list[dict[str, Any]]:
    """Views of a page of jobs; an active job's progress counts the items its running batches have done
    (one read per batch in flight: the ledger bounds them)."""
    in_flight = [s.value for s in SHARD_IN_FLIGHT]
    return [job_view(job, in_flight_done=sum(s.items_done() for s in jobs.shards(job.job_id, states=in_flight))
                     if job.active else 0) for job in found]


def describe_job(jobs: JobRepository, ledgers: LedgerRepository, job_id: str, now: datetime) -> dict[str, Any] | None:
    """One job for an operator: its view, its shards, its queue position and estimated start, and the
    capacity its ledger holds against its limit. None when there is no such job."""
    job = jobs.get(job_id)
    if job is None:
        return None
    small = job.shard_count <= LISTED_SHARDS
    shards = list(jobs.shards(job_id)) if small else list(jobs.shards(job_id, states=_OPEN))
    in_flight_done = sum(s.items_done() for s in shards if s.state in SHARD_IN_FLIGHT)
    view = job_view(job, in_flight_done=in_flight_done)
    view["shards"] = {
        "count": job.shard_count, "open": job.open_shards,
        "by_state": dict(Counter(s.state.value for s in shards)) if small else None,
        "list": [_shard_row(s) for s in shards],
    }
    ledger = ledgers.get(job.ledger) if job.ledger else None
    waiting = next(iter(jobs.shards(job_id, states=[ShardState.STAGED.value], limit=1)), None) if job.active else None
    if waiting is not None and waiting.ledger:
        ahead, tokens_ahead = jobs.queue_ahead(waiting.ledger, waiting.priority, waiting.fair_key)
        seconds = ledger.seconds_until(tokens_ahead) if ledger is not None else None
        view["queue"] = {
            "waiting_shards": job.open_shards - sum(1 for s in shards if s.state != ShardState.STAGED) if small else None,
            "position": ahead + 1, "tokens_ahead": tokens_ahead,
            "estimated_start": (now + timedelta(seconds=seconds)).isoformat() if seconds is not None else None,
        }
    if ledger is not None:
        view["capacity"] = {"ledger": ledger.key, **ledger.usage()}
    return view


def _shard_row(shard: Any) -> dict[str, Any]:
    return {
        "index": shard.index, "state": shard.state.value, "origin": shard.origin.value, "batch": shard.batch_name,
        "requests": shard.request_count, "tokens": shard.estimated_tokens, "succeeded": shard.succeeded,
        "failed": shard.failed, "pending": shard.pending, "attempt": shard.batch_attempts,
        "item_attempt": shard.item_attempt, "error": shard.provider_error.model_dump(mode="json") if shard.provider_error else None,
    }


def _waited(job: Job) -> float | None:
    if job.first_admitted_at is None:
        return None
    return round(max((job.first_admitted_at - job.created_at).total_seconds(), 0.0), 3)
