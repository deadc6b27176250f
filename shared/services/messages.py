"""The internal messages between the functions (Pub/Sub, at least once), one sender each.

    STAGE_TOPIC     {"job_id"}                   stage (the rest of) a job's input       -> `stage`
                    {"source": {...}}            submit an object whose event was lost    -> `stage`
    COMPLETE_TOPIC  {"job_id", "shard"}          write one shard's results                -> `complete`
                    {"job_id"}                   finish a job whose shards are all final  -> `complete`
    POLL_TOPIC      {"shards": [snapshot...]}    refresh due shards                       -> `poll_worker`
                    {"jobs": [snapshot...]}      look after due jobs                      -> `poll_worker`
                    {"create": [[job_id, shard]...]}  create admitted shards' batches     -> `poll_worker`
                    {"batches": [name...]}       batches a webhook says ended: poll them  -> `poll_worker`

A snapshot is the document as the poller's query read it, with its revision: the worker writes over that
revision only (so each due document is read once). Every receiver is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.config import Settings
from shared.domain.jobs import Job, Shard, SourceObject
from shared.ports import MessagePublisher

__all__ = ["Sender", "create_batches", "finish_job", "from_snapshot", "poll_batches", "poll_jobs", "poll_shards",
           "snapshot_of", "stage_job", "stage_object", "write_shard"]


class Sender(Protocol):
    """What sending needs: a `shared.services.context.Context` is one."""

    settings: Settings
    publisher: MessagePublisher


@dataclass(frozen=True)
class Outbox:
    """A sender alone, for a function that only hands work on (the public webhook)."""

    settings: Settings
    publisher: MessagePublisher


def _send(ctx: Sender, topic: str, payload: dict[str, Any], job_id: str | None = None) -> None:
    attributes = {"job_id": job_id} if job_id else {}
    ctx.publisher.publish(topic, json.dumps(payload, separators=(",", ":"), default=str).encode(), attributes)


def stage_job(ctx: Sender, job_id: str) -> None:
    _send(ctx, ctx.settings.stage_topic, {"job_id": job_id}, job_id)


def stage_object(ctx: Sender, source: SourceObject) -> None:
    _send(ctx, ctx.settings.stage_topic, {"source": source.model_dump(mode="json")})


def write_shard(ctx: Sender, job_id: str, index: int) -> None:
    _send(ctx, ctx.settings.complete_topic, {"job_id": job_id, "shard": index}, job_id)


def finish_job(ctx: Sender, job_id: str) -> None:
    _send(ctx, ctx.settings.complete_topic, {"job_id": job_id}, job_id)


def snapshot_of(doc: Job | Shard) -> dict[str, Any]:
    return {"doc": doc.model_dump(mode="json"), "revision": doc._revision}


def from_snapshot(kind: type[Job] | type[Shard], snapshot: dict[str, Any]) -> Job | Shard:
    doc = kind.model_validate(snapshot["doc"])
    doc._revision = snapshot.get("revision")
    return doc


def _groups(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start:start + size]


def poll_shards(ctx: Sender, shards: Sequence[Shard]) -> int:
    """Fan the due shards out to poll workers, a group per message; returns the messages sent."""
    return _fan_out(ctx, "shards", shards)


def poll_jobs(ctx: Sender, jobs: Sequence[Job]) -> int:
    """Fan the due jobs out to poll workers, a group per message; returns the messages sent."""
    return _fan_out(ctx, "jobs", jobs)


def _fan_out(ctx: Sender, kind: str, docs: Sequence[Job | Shard]) -> int:
    sent = 0
    for group in _groups(docs, ctx.settings.poll_group_size):
        _send(ctx, ctx.settings.poll_topic, {kind: [snapshot_of(doc) for doc in group]})
        sent += 1
    return sent


def poll_batches(ctx: Sender, names: Sequence[str]) -> int:
    _send(ctx, ctx.settings.poll_topic, {"batches": list(names)})
    return 1


def create_batches(ctx: Sender, shards: Sequence[tuple[str, int]]) -> int:
    sent = 0
    for group in _groups(shards, ctx.settings.poll_group_size):
        _send(ctx, ctx.settings.poll_topic, {"create": [list(s) for s in group]})
        sent += 1
    return sent
