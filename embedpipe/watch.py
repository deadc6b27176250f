"""`watch`: poll jobs until each has ended, and the exit code their end states make."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from embedpipe.errors import (
    EXIT_CANCELLED_OR_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TIMEOUT,
    CliError,
    JobNotFound,
)
from shared.domain.jobs import TERMINAL_JOB_STATES, Job, JobState

__all__ = ["WatchTimeout", "exit_code_for", "watch_jobs"]

#: How long `watch` waits for a job document that does not exist yet: `upload` prints the id at once,
#: the submit function creates the job a moment later.
DEFAULT_APPEAR_SECONDS = 30.0


class WatchTimeout(CliError):
    exit_code = EXIT_TIMEOUT


def exit_code_for(states: Iterable[JobState | str]) -> int:
    """0 when every job SUCCEEDED; 1 when any FAILED or was CANCELLED; else 2 (some PARTIALLY_SUCCEEDED)."""
    ended = [JobState(s) for s in states]
    active = [s for s in ended if s not in TERMINAL_JOB_STATES]
    if active:
        raise ValueError(f"jobs still active: {', '.join(active)}")
    if any(s in (JobState.FAILED, JobState.CANCELLED) for s in ended):
        return EXIT_CANCELLED_OR_FAILED
    if any(s == JobState.PARTIALLY_SUCCEEDED for s in ended):
        return EXIT_PARTIAL
    return EXIT_OK


@dataclass
class _Clock:
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.monotonic


def watch_jobs(
    job_ids: list[str],
    get_job: Callable[[str], Job | None],
    on_update: Callable[[Mapping[str, Job | None]], None],
    *,
    interval: float = 2.0,
    timeout: float | None = None,
    appear_timeout: float = DEFAULT_APPEAR_SECONDS,
    clock: _Clock | None = None,
) -> dict[str, Job]:
    """Read each unfinished job every `interval` seconds and report them all to `on_update`, until every
    job has ended; return the ended jobs. Raises `JobNotFound` for a job that has not appeared within
    `appear_timeout`, `WatchTimeout` once `timeout` has passed."""
    clock = clock or _Clock()
    began = clock.now()
    seen: dict[str, Job | None] = dict.fromkeys(job_ids)
    while True:
        for job_id in job_ids:
            current = seen[job_id]
            if current is None or not current.terminal:
                seen[job_id] = get_job(job_id) or current
        on_update(dict(seen))
        if all(job is not None and job.terminal for job in seen.values()):
            return {job_id: job for job_id, job in seen.items() if job is not None}
        elapsed = clock.now() - began
        missing = [job_id for job_id, job in seen.items() if job is None]
        if missing and elapsed >= appear_timeout:
            raise JobNotFound(f"no job {', '.join(missing)} after {appear_timeout:.0f}s (is the id right? "
                              "`embedpipe jobs` lists the latest)")
        if timeout is not None and elapsed >= timeout:
            waiting = [job_id for job_id, job in seen.items() if job is None or not job.terminal]
            raise WatchTimeout(f"timed out after {timeout:.0f}s; still running: {', '.join(waiting)}")
        clock.sleep(interval)
