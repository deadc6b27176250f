"""What every use case is given: the ports, the settings, a clock, and a lease owner id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings
from shared.domain.capabilities import Capabilities
from shared.domain.options import OptionError
from shared.domain.schedule import next_poll_at
from shared.errors import PermanentError
from shared.ports import (
    BatchProvider,
    BlobStore,
    EmbeddingCache,
    JobRepository,
    LedgerRepository,
    MessagePublisher,
)

__all__ = ["Context", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    jobs: JobRepository
    ledgers: LedgerRepository
    blobs: BlobStore
    providers: Mapping[str, BatchProvider]
    publisher: MessagePublisher
    settings: Settings
    cache: EmbeddingCache | None = None  # None: no reuse
    clock: Callable[[], datetime] = utc_now
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    # When this invocation started (monotonic seconds): time budgets are measured from it.
    started: float = field(default_factory=time.monotonic)
    monotonic: Callable[[], float] = time.monotonic

    @property
    def provider(self) -> BatchProvider:
        """The default provider."""
        return self.providers[self.settings.provider]

    def provider_for(self, name: str) -> BatchProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise PermanentError(f"provider {name!r} is not configured", code="PROVIDER_NOT_CONFIGURED") from None

    def capabilities(self, provider: str, model: str) -> Capabilities:
        """The capabilities of a provider's model; `OptionError` (naming the option) when it is not served."""
        if provider not in self.providers:
            raise OptionError("provider", provider, sorted(self.providers))
        try:
            return self.providers[provider].capabilities(model)
        except PermanentError:
            raise OptionError("model", model, f"an embedding model {provider} serves in batch") from None

    def next_poll_at(self, now: datetime, **schedule: Any) -> datetime:
        """`shared.domain.schedule.next_poll_at` within the configured bounds."""
        settings = self.settings
        return next_poll_at(now, minimum=settings.poll_min_interval_seconds,
                            maximum=settings.poll_max_interval_seconds, **schedule)

    def elapsed(self) -> float:
        """Seconds since this invocation started."""
        return self.monotonic() - self.started

    def for_invocation(self) -> Context:
        """A copy with a fresh lease owner and clock start: each delivery is its own worker."""
        return replace(self, owner=uuid.uuid4().hex, started=self.monotonic())
