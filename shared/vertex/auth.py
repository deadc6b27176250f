"""Where the client's bearer token comes from: Application Default Credentials, or a fixed token.

- `AdcTokens`: `google.auth.default()` with the cloud-platform scope, refreshed when expired (or when the
  server answered 401), one refresh at a time. On Cloud Run functions ADC is the function's service
  account; on a laptop `gcloud auth application-default login`.
- `StaticToken`: a token given by configuration, for the local emulator (it accepts any token unless told
  otherwise). Never for Google: a fixed token expires within the hour.

Errors: `VertexAuthError` when there are no credentials or Google refuses to refresh them,
`RetryableVertexError` when the token endpoint is unreachable. Tokens never appear in a message.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from shared.logging import register_secret
from shared.vertex.errors import RetryableVertexError, VertexAuthError

__all__ = ["SCOPES", "AdcTokens", "StaticToken", "TokenSource"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class TokenSource(Protocol):
    def token(self) -> str:
        """A valid access token."""

    def invalidate(self) -> None:
        """The server refused the last token: the next `token()` gets a new one."""


class StaticToken:
    def __init__(self, token: str):
        if not token:
            raise VertexAuthError("an empty access token was configured")
        register_secret(token)
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "StaticToken([REDACTED])"


class AdcTokens:
    """Application Default Credentials, loaded on first use (not at construction: functions start fast)."""

    def __init__(self, credentials: Any = None):
        self._credentials = credentials
        self._lock = threading.Lock()
        self._stale = False

    def token(self) -> str:
        with self._lock:
            credentials = self._loaded()
            if self._stale or not credentials.valid:
                self._refresh(credentials)
                self._stale = False
            return credentials.token

    def invalidate(self) -> None:
        with self._lock:
            self._stale = True

    def _loaded(self) -> Any:
        if self._credentials is None:
            import google.auth
            from google.auth import exceptions

            try:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            except exceptions.DefaultCredentialsError as exc:
                raise VertexAuthError(
                    "no Application Default Credentials: on Google Cloud run as a service account; locally run "
                    f"`gcloud auth application-default login` ({exc})", status="UNAUTHENTICATED") from None
        return self._credentials

    @staticmethod
    def _refresh(credentials: Any) -> None:
        from google.auth import exceptions
        from google.auth.transport.requests import Request

        try:
            credentials.refresh(Request())
        except exceptions.TransportError as exc:
            raise RetryableVertexError(f"could not reach Google's token endpoint ({type(exc).__name__})",
                                       status="UNAVAILABLE", reached_server=False) from None
        except exceptions.RefreshError as exc:
            kind = RetryableVertexError if getattr(exc, "retryable", False) else VertexAuthError
            raise kind(f"Google refused to refresh the credentials ({exc})", status="UNAUTHENTICATED") from None
        register_secret(credentials.token)
