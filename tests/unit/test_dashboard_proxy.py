"""`embedpipe dashboard`'s proxy, in front of a stand-in of ours for the status function (on 127.0.0.1).

It must add the operator's ID token to what it forwards, forward only the page's reads, keep the token
from the browser, refuse requests without this run's key or with a foreign Host, and mint the token again
before it expires.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from embedpipe.dashboard import REFRESH_MARGIN_SECONDS, DashboardProxy, TokenSource

PAGE = b"<!doctype html><title>Embedding jobs</title>"
CSP = "default-src 'none'; connect-src 'self'"


class StatusStandIn:
    """Answers like the status function and records the Authorization header of every request."""

    def __init__(self):
        self.seen: list[tuple[str, str, str]] = []  # method, path, Authorization
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                recorder.seen.append(("GET", self.path, self.headers.get("Authorization", "")))
                if self.path == "/dashboard":
                    body, kind = PAGE, "text/html"
                else:
                    body, kind = json.dumps({"jobs": [], "next": None, "path": self.path}).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Security-Policy", CSP)
                self.send_header("X-Internal", "not for the browser")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup():
    upstream = StatusStandIn()
    clock = Clock()
    minted: list[str] = []

    def mint():
        minted.append(f"id-token-{len(minted) + 1}")
        return minted[-1], clock.now + 3600

    proxy = DashboardProxy(upstream.url, TokenSource(mint, clock=clock)).start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", timeout=30)
    try:
        yield upstream, proxy, client, clock, minted
    finally:
        client.close()
        proxy.stop()
        upstream.stop()


def _key(proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


def test_the_page_and_the_jobs_go_upstream_with_the_id_token(setup):
    upstream, proxy, client, _, _ = setup
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.content == PAGE
    assert page.headers["content-security-policy"] == CSP and "x-internal" not in page.headers
    jobs = client.get("/jobs?limit=50&state=RUNNING", headers=_key(proxy))
    assert jobs.status_code == 200 and jobs.json()["path"] == "/jobs?limit=50&state=RUNNING"
    one = client.get("/jobs/job-0123456789abcdef0123", headers=_key(proxy))
    assert one.status_code == 200
    assert [auth for _, _, auth in upstream.seen] == ["Bearer id-token-1"] * 3, "the key never goes upstream"
    assert proxy.url == f"http://127.0.0.1:{proxy.port}/dashboard#token={proxy.key}"


def test_jobs_need_this_runs_key(setup):
    upstream, proxy, client, _, _ = setup
    for headers in ({}, {"Authorization": "Bearer guessed"}, {"Authorization": f"Basic {proxy.key}"}):
        answer = client.get("/jobs", headers=headers)
        assert answer.status_code == 401 and "key is missing or wrong" in answer.json()["error"]
    assert upstream.seen == []


def test_only_the_pages_reads_are_forwarded(setup):
    upstream, proxy, client, _, _ = setup
    assert client.post("/jobs/job-1:cancel", headers=_key(proxy)).status_code == 405
    assert client.delete("/jobs/job-1", headers=_key(proxy)).status_code == 405
    for path in ("/jobs/job-1:cancel", "/", "/admin", "/jobs/../secrets", "/dashboard/extra"):
        assert client.get(path, headers=_key(proxy)).status_code == 404, path
    assert upstream.seen == []


def test_a_foreign_host_is_refused(setup):
    upstream, proxy, client, _, _ = setup
    answer = client.get("/jobs", headers={**_key(proxy), "Host": "attacker.example"})
    assert answer.status_code == 403 and upstream.seen == []


def test_the_token_is_minted_again_before_it_expires(setup):
    upstream, proxy, client, clock, minted = setup
    client.get("/jobs", headers=_key(proxy))
    clock.now += 3600 - REFRESH_MARGIN_SECONDS - 1
    client.get("/jobs", headers=_key(proxy))
    assert minted == ["id-token-1"]
    clock.now += 2
    client.get("/jobs", headers=_key(proxy))
    assert minted == ["id-token-1", "id-token-2"]
    assert [auth for _, _, auth in upstream.seen] == ["Bearer id-token-1", "Bearer id-token-1", "Bearer id-token-2"]


def test_an_unreachable_status_function_is_a_clear_502():
    closed = StatusStandIn()
    url = closed.url
    closed.stop()
    proxy = DashboardProxy(url, TokenSource(lambda: ("t", None))).start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{proxy.port}/jobs", headers=_key(proxy), timeout=30)
        assert answer.status_code == 502 and "cannot reach the status function" in answer.json()["error"]
    finally:
        proxy.stop()


def test_the_command_fails_early_without_a_status_url(tmp_path, capsys):
    from embedpipe import cli

    env = tmp_path / "env"
    env.write_text("GOOGLE_CLOUD_PROJECT=p\n")
    assert cli.run(["--env-file", str(env), "dashboard", "--no-open"]) == 4
    assert "STATUS_URL is not set" in capsys.readouterr().err
