"""Who may call the HTTP functions (poller, status, cancel).

In the cloud: Cloud Scheduler's (or an operator's) Google-signed OIDC token, for the configured audience,
from one of the allowed service accounts. Locally: a shared bearer token from `.local/env`. Missing or
invalid credentials -> 401; a valid token of someone not allowed -> 403. With neither configured,
everything is refused (fail closed).

Google's signing certificates are fetched once and reused for as long as Google's answer says
(Cache-Control max-age, hours), not on every request: `CachingRequest`.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from shared.config import Settings

__all__ = ["AuthError", "CachingRequest", "authorize"]

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"  # where verify_oauth2_token reads them
DEFAULT_MAX_AGE = 300.0  # seconds, when an answer carries no max-age
LONGEST_MAX_AGE = 86_400.0


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class CachingRequest:
    """A google-auth transport request that keeps successful GET answers for their Cache-Control max-age.

    google-auth fetches the signing certificates through the request it is given, on every verification;
    Google serves them with a max-age of hours. Only GETs of the URLs in `cached_urls` are kept; anything else
    passes through. Thread-safe: concurrent requests of one instance share the answer.
    """

    def __init__(self, request: Callable[..., Any], cached_urls: frozenset[str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._request = request
        self._cached_urls = cached_urls
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, Any]] = {}

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        if method != "GET" or (self._cached_urls is not None and url not in self._cached_urls):
            return self._request(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        with self._lock:
            kept = self._answers.get(url)
            if kept is not None and kept[0] > self._clock():
                return kept[1]
            response = self._request(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
            if response.status == 200:
                self._answers[url] = (self._clock() + _max_age(response.headers), response)
            return response


def _max_age(headers: Any) -> float:
    control = {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}.get("cache-control", "")
    if "no-store" in control or "no-cache" in control:
        return 0.0
    match = re.search(r"max-age=(\d+)", control)
    return min(float(match[1]), LONGEST_MAX_AGE) if match else DEFAULT_MAX_AGE


@lru_cache(maxsize=1)
def _google_request() -> CachingRequest:
    import google.auth.transport.requests
    import requests

    return CachingRequest(google.auth.transport.requests.Request(session=requests.Session()),
                          frozenset({GOOGLE_CERTS_URL}))


def authorize(authorization: str | None, settings: Settings) -> str:
    """Check an `Authorization` header; returns who the caller is, or raises `AuthError`."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "missing bearer token")
    token = token.strip()
    local_token = settings.poller_token.get_secret_value()
    if local_token:
        if hmac.compare_digest(token.encode(), local_token.encode()):
            return "local-token"
        raise AuthError(401, "invalid token")
    if settings.poller_audience:
        from google.oauth2 import id_token

        try:
            claims = id_token.verify_oauth2_token(token, _google_request(), audience=settings.poller_audience)
        except Exception:  # noqa: BLE001 - any verification failure is an invalid token
            raise AuthError(401, "invalid token") from None
        allowed = {e.strip() for e in settings.poller_invoker_email.split(",") if e.strip()}
        email = claims.get("email", "")
        if not claims.get("email_verified") or email not in allowed:
            raise AuthError(403, "this identity may not call this endpoint")
        return email
    raise AuthError(403, "no credentials are configured for this endpoint")
