"""Who may call the HTTP functions (poller, status, cancel).

In the cloud: Cloud Scheduler's (or an operator's) Google-signed OIDC token, for the configured audience,
from one of the allowed service accounts. Locally: a shared bearer token from `.local/env`. Missing or
invalid credentials -> 401; a valid token of someone not allowed -> 403. With neither configured,
everything is refused (fail closed).
"""

from __future__ import annotations

import hmac
from functools import lru_cache

from shared.config import Settings

__all__ = ["AuthError", "authorize"]


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@lru_cache(maxsize=1)
def _google_request():
    import google.auth.transport.requests
    import requests

    return google.auth.transport.requests.Request(session=requests.Session())


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
