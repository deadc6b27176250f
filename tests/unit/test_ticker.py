"""The ticker calls each scheduled function as Cloud Scheduler would, keeps going on errors, and pauses on
request."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime

import httpx
import pytest

from infra.local.processes import wait_until
from infra.local.ticker import Schedule, Ticker, parse_jobs, scheduler_headers, tick

TOKEN = "s3cret-token-value"


def test_a_tick_is_a_bearer_authorized_scheduler_post():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"polled": 2})

    result = tick(httpx.Client(transport=httpx.MockTransport(handler)), "http://127.0.0.1:1/", TOKEN)

    assert result.ok() and result.status == 200 and result.summary == {"polled": 2}
    request = seen[0]
    assert request.method == "POST" and request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"] == "Google-Cloud-Scheduler" and request.headers["x-cloudscheduler"] == "true"
    assert request.content == b""


def test_scheduler_headers_carry_the_schedule_time_in_utc():
    headers = scheduler_headers("t", datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=UTC))
    assert headers["X-CloudScheduler-ScheduleTime"] == "2025-01-02T03:04:05.600000Z"
    assert headers["X-CloudScheduler-JobName"] == "embeddings-poller"
    assert "Authorization" not in scheduler_headers("", datetime.now(UTC)), "a job without a token sends none"


def test_errors_are_results_not_exceptions():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    failed = tick(httpx.Client(transport=httpx.MockTransport(refuse)), "http://127.0.0.1:1/", TOKEN)
    text = tick(httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500, text="boom"))),
                "http://127.0.0.1:1/", TOKEN)

    assert not failed.ok() and failed.status is None and "ConnectError" in failed.error
    assert not text.ok() and text.status == 500 and text.summary == "boom"


def test_the_ticker_keeps_going_logs_each_tick_and_never_the_token(monkeypatch):
    answers = iter([httpx.Response(500, text=f"bad {TOKEN}"), httpx.Response(200, json={"due": 0})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200, json={"due": 0}))

    real_client = httpx.Client
    monkeypatch.setattr("infra.local.ticker.httpx.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    out = io.StringIO()
    ticker = Ticker("http://127.0.0.1:1/", TOKEN, interval=0.01, out=out)
    runner = threading.Thread(target=ticker.run)
    runner.start()
    wait_until(lambda: ticker.state()["ticks"] >= 2, 5, what="two ticks")
    ticker.stop()
    runner.join(5)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["status"] for line in lines[:2]] == [500, 200]
    assert lines[1]["summary"] == {"due": 0} and lines[0]["severity"] == "WARNING"
    assert TOKEN not in out.getvalue()
    assert ticker.state()["failures"] == 1


def test_pause_waits_for_the_tick_under_way_and_holds_the_next(monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(5)
        return httpx.Response(200, json={})

    real_client = httpx.Client
    monkeypatch.setattr("infra.local.ticker.httpx.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    ticker = Ticker("http://127.0.0.1:1/", TOKEN, interval=0.01, out=io.StringIO())
    runner = threading.Thread(target=ticker.run)
    runner.start()
    assert entered.wait(5)
    paused = {}
    pauser = threading.Thread(target=lambda: paused.update(ticker.pause()))
    pauser.start()
    wait_until(lambda: ticker.state()["paused"], 5, what="the pause request")
    release.set()
    pauser.join(5)
    assert paused["ticks"] == 1 and not paused["ticking"], "pause returned once the tick under way had ended"
    assert not wait_for_ticks(ticker, 2, 0.3), "no tick while paused"
    ticker.resume()
    assert wait_for_ticks(ticker, 2, 5)
    ticker.stop()
    runner.join(5)


def wait_for_ticks(ticker: Ticker, count: int, seconds: float) -> bool:
    try:
        wait_until(lambda: ticker.state()["ticks"] >= count, seconds, what="ticks")
    except TimeoutError:
        return False
    return True


def test_jobs_are_read_from_json_with_the_token_only_where_asked():
    jobs = json.dumps([{"name": "poller", "url": "http://a/", "every_s": 1.5, "timeout_s": 190, "token": True},
                       {"name": "sweep", "url": "http://b/", "every_s": 60, "timeout_s": 70, "token": False}])
    poller, sweep = parse_jobs(jobs, TOKEN)
    assert (poller.name, poller.url, poller.interval, poller.timeout, poller.token) == ("poller", "http://a/", 1.5, 190, TOKEN)
    assert (sweep.name, sweep.token) == ("sweep", "")


@pytest.mark.parametrize(("jobs", "token", "problem"), [
    ("nope", TOKEN, "not JSON"),
    ("[]", TOKEN, "non-empty JSON list"),
    ('[{"name": "x"}]', TOKEN, "needs a name and a url"),
    ('[{"name": "x", "url": "http://a/", "every_s": 0}]', TOKEN, "must be positive"),
    ('[{"name": "x", "url": "http://a/", "token": true}]', "", "POLLER_TOKEN is not set"),
])
def test_bad_jobs_are_refused(jobs, token, problem):
    with pytest.raises(ValueError, match=problem):
        parse_jobs(jobs, token)


def test_a_schedule_runs_each_job_on_its_own_and_totals_them(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization"), request.headers["x-cloudscheduler-jobname"]))
        return httpx.Response(200, json={"url": str(request.url)})

    real_client = httpx.Client
    monkeypatch.setattr("infra.local.ticker.httpx.Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    schedule = Schedule([Ticker("http://a/", TOKEN, 0.01, name="poller", out=io.StringIO()),
                         Ticker("http://b/", "", 0.01, name="sweep", out=io.StringIO())])
    runner = threading.Thread(target=schedule.run)
    runner.start()
    wait_until(lambda: all(job["ticks"] >= 2 for job in schedule.state()["jobs"].values()), 5, what="both jobs")
    paused = schedule.pause()
    schedule.stop()
    runner.join(5)

    state = schedule.state()
    assert paused["paused"] and not paused["ticking"]
    assert state["ticks"] == sum(job["ticks"] for job in state["jobs"].values()) and state["failures"] == 0
    assert ("http://a/", f"Bearer {TOKEN}", "embeddings-poller") in seen
    assert ("http://b/", None, "embeddings-sweep") in seen
