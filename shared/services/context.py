"""What every use case is given: the ports, the settings, a clock, and a lease owner id."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings
from shared.domain.schedule import next_poll_at
from shared.ports import BatchProvider, BlobStore, JobRepository, MessagePublisher

__all__ = ["Context", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    jobs: JobRepository
    blobs: BlobStore
    provider: BatchProvider
    publisher: MessagePublisher
    settings: Settings
    clock: Callable[[], datetime] = utc_now
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def next_poll_at(self, now: datetime, **schedule: Any) -> datetime:
        """`shared.domain.schedule.next_poll_at` within the configured bounds."""
        settings = self.settings
        return next_poll_at(now, minimum=settings.poll_min_interval_seconds,
                            maximum=settings.poll_max_interval_seconds, **schedule)

    def for_invocation(self) -> Context:
        """A copy with a fresh lease owner: each delivery is its own worker, even in one process."""
        return replace(self, owner=uuid.uuid4().hex)
