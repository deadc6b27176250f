"""When to look at a job again: the source guide's intervals by batch size, stretched with age and
backed off on errors, within configured bounds."""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["interval_for_size", "next_poll_at"]


def interval_for_size(size: int) -> float:
    """Seconds between polls for a batch of `size` requests (the guide's table)."""
    if size < 100:
        return 2.0
    if size < 1_000:
        return 5.0
    if size < 10_000:
        return 10.0
    return 30.0


def next_poll_at(
    now: datetime,
    *,
    size: int,
    age_seconds: float,
    failures: int = 0,
    seconds_left: float | None = None,
    minimum: float = 2.0,
    maximum: float = 600.0,
) -> datetime:
    """The next poll time.

    A batch that has run for an hour will not finish in the next two seconds: after the size-based
    interval, waiting grows with age (a tenth of it), and doubles with each consecutive failure. When the
    batch's progress gives `seconds_left`, the poll comes then if that is sooner, so its end is noticed
    within about one poll rather than up to a whole interval late.
    """
    interval = max(interval_for_size(size), age_seconds / 10.0)
    if seconds_left is not None:
        interval = min(interval, seconds_left)
    if failures:
        interval *= 2 ** min(failures, 10)
    return now + timedelta(seconds=min(max(interval, minimum), maximum))
