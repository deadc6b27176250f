"""How often to poll a batch and how long to wait for it, by its number of requests (the guide's table).

| requests       | poll every |
| -------------- | ---------- |
| under 100      | 2 s        |
| under 1,000    | 5 s        |
| under 10,000   | 10 s       |
| 10,000 or more | 30 s       |

The default wait is one second per request plus two minutes.
"""

from __future__ import annotations

__all__ = ["TIMEOUT_BUFFER_SECONDS", "TIMEOUT_SECONDS_PER_REQUEST", "poll_interval_for", "timeout_for"]

_INTERVALS = ((100, 2.0), (1_000, 5.0), (10_000, 10.0))
_LONGEST_INTERVAL = 30.0
TIMEOUT_SECONDS_PER_REQUEST = 1.0
TIMEOUT_BUFFER_SECONDS = 120.0


def poll_interval_for(batch_size: int) -> float:
    """Seconds between two polls of a batch of `batch_size` requests."""
    for bound, interval in _INTERVALS:
        if batch_size < bound:
            return interval
    return _LONGEST_INTERVAL


def timeout_for(batch_size: int) -> float:
    """Seconds to wait for a batch of `batch_size` requests before giving up."""
    return max(0, batch_size) * TIMEOUT_SECONDS_PER_REQUEST + TIMEOUT_BUFFER_SECONDS
