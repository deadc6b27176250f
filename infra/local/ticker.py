"""Cloud Scheduler, locally: POST the poller every few seconds.

Each tick is one POST to POLLER_URL with `Authorization: Bearer $POLLER_TOKEN` and the headers Cloud
Scheduler adds (`User-Agent: Google-Cloud-Scheduler`, `X-CloudScheduler*`), an empty body. Ticks never
overlap: the next one starts `interval` seconds after the previous one started, or at once if it took
longer. `POST /pause` (returns once no tick is under way) and `POST /resume` on the health port hold
the ticks, e.g. while a test resets the stack. Any answer or error is logged as one JSON line (status, ms, the JSON summary the poller returned)
and the ticker keeps going. The token is never logged.

Run: `python -m infra.local.ticker` with POLLER_URL, POLLER_TOKEN and optionally POLLER_TICK_SECONDS
(default 2), POLLER_TIMEOUT_SECONDS (default 120), TICKER_PORT (a health endpoint: GET /health gives
the tick counters and the last summary).
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

__all__ = ["DEFAULT_TICK_SECONDS", "Ticker", "TickResult", "scheduler_headers", "tick"]

DEFAULT_TICK_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 120.0  # over the poller's 50 s time budget
JOB_NAME = "projects/local-project/locations/local/jobs/embeddings-poller"
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
    """The headers of one Cloud Scheduler HTTP call with a bearer token."""
    return {
        "Authorization": f"Bearer {token}",
        "User-Agent": "Google-Cloud-Scheduler",
        "X-CloudScheduler": "true",
        "X-CloudScheduler-JobName": job_name.rsplit("/", 1)[-1],
        "X-CloudScheduler-ScheduleTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def tick(client: httpx.Client, url: str, token: str) -> TickResult:
    """POST the poller once; never raises for an HTTP failure (it is in the result)."""
    started = time.monotonic()
    try:
        response = client.post(url, headers=scheduler_headers(token, datetime.now(UTC)))
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
    ticks: int = 0
    failures: int = 0
    last: TickResult | None = None
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
                    result = tick(client, self.url, self.token)
                finally:
                    with self._cond:
                        self.ticking = False
                        self.ticks += 1
                        self.failures += 0 if result.ok() else 1
                        self.last = result
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
            }

    def _log(self, result: TickResult) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "logger": "ticker",
            "severity": "INFO" if result.ok() else "WARNING",
            "message": "tick",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.ticker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("POLLER_URL"))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("POLLER_TICK_SECONDS", DEFAULT_TICK_SECONDS)))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("POLLER_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)))
    parser.add_argument("--host", default="127.0.0.1", help="health endpoint host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TICKER_PORT", "0")), help="health endpoint port; 0: none")
    args = parser.parse_args(argv)
    token = os.environ.get("POLLER_TOKEN", "")
    if not args.url:
        parser.error("no poller URL: set POLLER_URL or pass --url")
    if not token:
        parser.error("POLLER_TOKEN is not set (the token is read from the environment only)")
    if args.interval <= 0:
        parser.error("the interval must be positive")

    ticker = Ticker(args.url, token, args.interval, args.timeout)

    def on_signal(*_: object) -> None:
        ticker.stop()
        raise SystemExit(0)  # also ends a POST under way (it may wait for POLLER_TIMEOUT_SECONDS)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.port:
        from infra.local.processes import serve_json

        server = serve_json(args.host, args.port, ticker.state, {"pause": ticker.pause, "resume": ticker.resume})
    try:
        ticker.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
