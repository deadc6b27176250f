"""Cloud Scheduler, locally: POST each scheduled function every few seconds.

Each tick is one POST to the job's URL with the headers Cloud Scheduler adds (`User-Agent:
Google-Cloud-Scheduler`, `X-CloudScheduler*`), `Authorization: Bearer $POLLER_TOKEN` for a job that
needs it, an empty body. A job's ticks never overlap: the next one starts `interval` seconds after the
previous one started, or at once if it took longer. `POST /pause` (returns once no tick is under way) and
`POST /resume` on the health port hold every job's ticks, e.g. while a test resets the stack. Any answer
or error is logged as one JSON line (job, status, ms, the JSON summary returned) and the ticker keeps
going. The token is never logged.

Run: `python -m infra.local.ticker --jobs '[{"name": "poller", "url": URL, "every_s": 2, "timeout_s": 190,
"token": true}]'` (what `infra.local.stack` passes), or the one job of POLLER_URL with optionally
POLLER_TICK_SECONDS (default 2) and POLLER_TIMEOUT_SECONDS (default 120); POLLER_TOKEN from the
environment; TICKER_PORT a health endpoint (GET /health: the tick counters and the last summary, in total
and per job).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["DEFAULT_TICK_SECONDS", "Schedule", "Ticker", "TickResult", "parse_jobs", "scheduler_headers", "tick"]

DEFAULT_TICK_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 120.0  # over the poller's 50 s time budget
JOB_PREFIX = "projects/local-project/locations/local/jobs/embeddings-"
JOB_NAME = JOB_PREFIX + "poller"
SUMMARY_LIMIT = 2000  # characters of a non-JSON answer kept in the log


@dataclass(frozen=True)
class TickResult:
    status: int | None
    ms: int
    summary: Any = None
    error: str = ""

    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def scheduler_headers(token: str, now: datetime, job_name: str = JOB_NAME) -> dict[str, str]:
    """The headers of one Cloud Scheduler HTTP call, with a bearer token unless `token` is empty."""
    return {
        **({"Authorization": f"Bearer {token}"} if token else {}),
        "User-Agent": "Google-Cloud-Scheduler",
        "X-CloudScheduler": "true",
        "X-CloudScheduler-JobName": job_name.rsplit("/", 1)[-1],
        "X-CloudScheduler-ScheduleTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def tick(client: httpx.Client, url: str, token: str, job_name: str = JOB_NAME) -> TickResult:
    """POST the job's URL once; never raises for an HTTP failure (it is in the result)."""
    started = time.monotonic()
    try:
        response = client.post(url, headers=scheduler_headers(token, datetime.now(UTC), job_name))
    except httpx.HTTPError as exc:
        return TickResult(None, round((time.monotonic() - started) * 1000), error=f"{type(exc).__name__}: {exc}")
    elapsed = round((time.monotonic() - started) * 1000)
    try:
        summary: Any = response.json()
    except ValueError:
        summary = response.text[:SUMMARY_LIMIT]
    return TickResult(response.status_code, elapsed, summary)


@dataclass
class Ticker:
    """Ticks `url` every `interval` seconds until `stop()`; `state()` is served on the health endpoint.

    `pause()` returns once no tick is under way and none starts until `resume()`.
    """

    url: str
    token: str
    interval: float = DEFAULT_TICK_SECONDS
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    out: Any = None
    name: str = "poller"
    ticks: int = 0
    failures: int = 0
    last: TickResult | None = None
    last_at: float = 0.0  # monotonic time the last tick ended
    paused: bool = False
    ticking: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            while not self._stop.is_set():
                with self._cond:
                    while self.paused and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        return
                    self.ticking = True
                started = time.monotonic()
                result = TickResult(None, 0, error="interrupted")
                try:
                    result = tick(client, self.url, self.token, JOB_PREFIX + self.name)
                finally:
                    with self._cond:
                        self.ticking = False
                        self.ticks += 1
                        self.failures += 0 if result.ok() else 1
                        self.last, self.last_at = result, time.monotonic()
                        self._cond.notify_all()
                self._log(result)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def pause(self) -> dict[str, Any]:
        with self._cond:
            self.paused = True
            self._cond.wait_for(lambda: not self.ticking)
        return self.state()

    def resume(self) -> dict[str, Any]:
        with self._cond:
            self.paused = False
            self._cond.notify_all()
        return self.state()

    def state(self) -> dict[str, Any]:
        with self._cond:
            last = self.last
            return {
                "ok": True,
                "url": self.url,
                "interval_s": self.interval,
                "paused": self.paused,
                "ticking": self.ticking,
                "ticks": self.ticks,
                "failures": self.failures,
                "last_status": last.status if last else None,
                "last_summary": last.summary if last else None,
                "last_error": last.error if last else "",
                "last_at": self.last_at,
            }

    def _log(self, result: TickResult) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "logger": "ticker",
            "severity": "INFO" if result.ok() else "WARNING",
            "message": "tick",
            "job": self.name,
            "target": self.url,
            "status": result.status,
            "ms": result.ms,
        }
        if result.error:
            entry["error"] = result.error
        else:
            entry["summary"] = result.summary
        text = json.dumps(entry, ensure_ascii=False, default=str)
        if self.token:
            text = text.replace(self.token, "[REDACTED]")  # a poller that echoes its header must not leak it
        print(text, file=self.out or sys.stdout, flush=True)


@dataclass
class Schedule:
    """Several jobs' tickers as one: run, pause, resume and stop them together; `state()` totals them
    (`ticks`, `failures`, the latest tick's `last_*`) and gives each under `jobs`."""

    tickers: list[Ticker]

    def run(self) -> None:
        threads = [threading.Thread(target=t.run, name=f"tick:{t.name}", daemon=True) for t in self.tickers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def stop(self) -> None:
        for ticker in self.tickers:
            ticker.stop()

    def pause(self, params: Any = None) -> dict[str, Any]:
        for ticker in self.tickers:
            ticker.pause()
        return self.state()

    def resume(self, params: Any = None) -> dict[str, Any]:
        for ticker in self.tickers:
            ticker.resume()
        return self.state()

    def state(self) -> dict[str, Any]:
        jobs = {ticker.name: ticker.state() for ticker in self.tickers}
        latest = max(jobs.values(), key=lambda job: job["last_at"])
        return {
            "ok": True,
            "paused": all(job["paused"] for job in jobs.values()),
            "ticking": any(job["ticking"] for job in jobs.values()),
            "ticks": sum(job["ticks"] for job in jobs.values()),
            "failures": sum(job["failures"] for job in jobs.values()),
            **{key: latest[key] for key in ("url", "interval_s", "last_status", "last_summary", "last_error")},
            "jobs": jobs,
        }


def parse_jobs(text: str, token: str) -> list[Ticker]:
    """Tickers from the `--jobs` JSON list; ValueError naming what is wrong."""
    try:
        jobs = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--jobs is not JSON: {exc}") from exc
    if not isinstance(jobs, list) or not jobs:
        raise ValueError("--jobs must be a non-empty JSON list of {name, url, every_s, timeout_s, token}")
    tickers = []
    for job in jobs:
        if not isinstance(job, dict) or not job.get("name") or not job.get("url"):
            raise ValueError(f"a job needs a name and a url: {job!r}")
        every = float(job.get("every_s", DEFAULT_TICK_SECONDS))
        timeout = float(job.get("timeout_s", DEFAULT_TIMEOUT_SECONDS))
        if every <= 0 or timeout <= 0:
            raise ValueError(f"job {job['name']}: every_s and timeout_s must be positive")
        if job.get("token") and not token:
            raise ValueError(f"job {job['name']} sends the token, but POLLER_TOKEN is not set")
        tickers.append(Ticker(job["url"], token if job.get("token") else "", every, timeout, name=job["name"]))
    return tickers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.ticker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", help="the jobs, a JSON list of {name, url, every_s, timeout_s, token}")
    parser.add_argument("--url", default=os.environ.get("POLLER_URL"), help="one job, `poller`, of this URL")
    parser.add_argument("--interval", type=float, default=float(os.environ.get("POLLER_TICK_SECONDS", DEFAULT_TICK_SECONDS)))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("POLLER_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)))
    parser.add_argument("--host", default="127.0.0.1", help="health endpoint host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TICKER_PORT", "0")), help="health endpoint port; 0: none")
    args = parser.parse_args(argv)
    token = os.environ.get("POLLER_TOKEN", "")
    if args.jobs:
        try:
            schedule = Schedule(parse_jobs(args.jobs, token))
        except ValueError as exc:
            parser.error(str(exc))
    else:
        if not args.url:
            parser.error("no job: give --jobs, or set POLLER_URL (or pass --url)")
        if not token:
            parser.error("POLLER_TOKEN is not set (the token is read from the environment only)")
        if args.interval <= 0:
            parser.error("the interval must be positive")
        schedule = Schedule([Ticker(args.url, token, args.interval, args.timeout)])

    def on_signal(*_: object) -> None:
        schedule.stop()
        raise SystemExit(0)  # also ends a POST under way (it may wait for the job's timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.port:
        from infra.local.processes import serve_json

        server = serve_json(args.host, args.port, schedule.state, {"pause": schedule.pause, "resume": schedule.resume})
    try:
        schedule.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
