"""`embedpipe dashboard`: the status function's dashboard in a browser, through a proxy on this machine.

In the cloud, Cloud Run IAM refuses a browser's request before the page loads: a browser carries no Google
ID token. So the command runs a small proxy on 127.0.0.1 that forwards the page's requests to STATUS_URL
with the operator's ID token in the Authorization header (one token satisfies both Cloud Run IAM and
shared/auth.py: audience = the status URL, email = the operator account), and opens the page.

Guarantees:
- it listens on 127.0.0.1 only;
- it forwards only what the page reads: GET/HEAD of /dashboard, /jobs and /jobs/<id> (no cancel, nothing else);
- the ID token never reaches the browser: the page gets a random key for this run (in the URL fragment,
  which browsers never send), uses it as its bearer token, and the proxy swaps it for the ID token; a
  request without that key, or naming another Host than the proxy (DNS rebinding), is refused;
- the ID token is minted again before it expires (they live an hour).
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

__all__ = ["DashboardProxy", "TokenSource", "token_source"]

REFRESH_MARGIN_SECONDS = 300
ALLOWED_PATH = re.compile(r"^/(dashboard/?|jobs|jobs/[A-Za-z0-9._-]+)$")
PASSED_HEADERS = ("content-type", "content-security-policy", "referrer-policy", "x-content-type-options",
                  "cache-control")


class TokenSource:
    """A bearer token, minted by `mint` (-> token, expiry as epoch seconds or None) and minted again a few
    minutes before it expires."""

    def __init__(self, mint: Callable[[], tuple[str, float | None]], clock: Callable[[], float] = time.time):
        self._mint = mint
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expiry: float | None = None

    def token(self) -> str:
        with self._lock:
            stale = self._expiry is not None and self._expiry - REFRESH_MARGIN_SECONDS <= self._clock()
            if self._token is None or stale:
                self._token, self._expiry = self._mint()
            return self._token


def token_source(config: Any, audience: str, impersonate: str | None = None) -> TokenSource:
    """The operator's token: POLLER_TOKEN (local stack), else STATUS_TOKEN (minted elsewhere), else an ID token
    of `impersonate` (the operator service account) from your ADC, else one from the environment's credentials
    (a service account key or the metadata server)."""
    for name in ("POLLER_TOKEN", "STATUS_TOKEN"):
        value = config.get(name)
        if value:
            return TokenSource(lambda value=value: (value, None))
    if impersonate:
        return TokenSource(lambda: _impersonated_id_token(impersonate, audience))
    return TokenSource(lambda: _environment_id_token(audience))


def _expiry_of(credentials: Any) -> float | None:
    expiry = getattr(credentials, "expiry", None)
    return expiry.replace(tzinfo=UTC).timestamp() if isinstance(expiry, datetime) else None


def _impersonated_id_token(service_account: str, audience: str) -> tuple[str, float | None]:
    """An ID token of `service_account` with its email, minted through your ADC (needs
    roles/iam.serviceAccountTokenCreator on it, which infra/terraform grants operators_group)."""
    import google.auth
    import google.auth.transport.requests
    from google.auth import impersonated_credentials

    source, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    target = impersonated_credentials.Credentials(source_credentials=source, target_principal=service_account,
                                                  target_scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials = impersonated_credentials.IDTokenCredentials(target, target_audience=audience, include_email=True)
    credentials.refresh(google.auth.transport.requests.Request())
    return credentials.token, _expiry_of(credentials)


def _environment_id_token(audience: str) -> tuple[str, float | None]:
    import google.auth.transport.requests
    from google.oauth2 import id_token

    request = google.auth.transport.requests.Request()
    credentials = id_token.fetch_id_token_credentials(audience, request=request)
    credentials.refresh(request)
    return credentials.token, _expiry_of(credentials)


class DashboardProxy:
    """The proxy: `start()` serves on 127.0.0.1 in a thread, `url` is the page to open, `stop()` ends it."""

    def __init__(self, upstream: str, tokens: TokenSource, port: int = 0,
                 transport: httpx.BaseTransport | None = None):
        self.upstream = upstream.rstrip("/")
        self.tokens = tokens
        self.key = secrets.token_urlsafe(32)
        self._client = httpx.Client(base_url=self.upstream, timeout=60, transport=transport)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard#token={self.key}"

    def start(self) -> DashboardProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def serve_until_interrupted(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()
            self._client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "embedpipe-dashboard"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                proxy._serve(self)

            def do_HEAD(self) -> None:  # noqa: N802
                proxy._serve(self)

            def _refuse(self) -> None:
                self.send_error(405, "the dashboard proxy forwards only the page's reads")

            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no request log
                return

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        path, _, query = request.path.partition("?")
        if request.headers.get("Host") not in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            return request.send_error(403, "unexpected Host")
        if not ALLOWED_PATH.match(path):
            return request.send_error(404, "the dashboard proxy forwards only /dashboard and /jobs")
        if path.startswith("/jobs") and not self._has_key(request.headers.get("Authorization", "")):
            return self._reply(request, 401, b'{"error": "this dashboard session\'s key is missing or wrong: '
                                            b'open the URL embedpipe dashboard printed"}',
                               {"content-type": "application/json"})
        try:
            answer = self._client.request(request.command, path + (f"?{query}" if query else ""),
                                          headers={"Authorization": f"Bearer {self.tokens.token()}"})
        except httpx.TransportError as exc:
            return self._reply(request, 502, f'{{"error": "cannot reach the status function: {type(exc).__name__}"}}'
                               .encode(), {"content-type": "application/json"})
        except Exception as exc:  # noqa: BLE001 - a token that cannot be minted: say so, keep serving
            return self._reply(request, 502, f'{{"error": "cannot mint an ID token: {type(exc).__name__}"}}'.encode(),
                               {"content-type": "application/json"})
        headers = {name: answer.headers[name] for name in PASSED_HEADERS if name in answer.headers}
        self._reply(request, answer.status_code, answer.content, headers)

    def _has_key(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.key.encode())

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
