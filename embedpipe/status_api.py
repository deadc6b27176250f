"""Calls to the status function's jobs API (cancel), authenticated as `shared/auth.py` expects.

The bearer token is POLLER_TOKEN when set (the local stack's shared token); else STATUS_TOKEN when set (an
ID token minted elsewhere, e.g. `gcloud auth print-identity-token --impersonate-service-account=OPERATOR_SA
--audiences=STATUS_URL --include-email`); else a Google ID token for the STATUS_URL audience from
`google.oauth2.id_token.fetch_id_token` (service-account or impersonated ADC, or the metadata server).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from embedpipe.config import Config
from embedpipe.errors import CliError, JobNotFound, Refused, Unreachable
from embedpipe.services import first_line
from shared.services.cancel import CancelResult

__all__ = ["bearer_token", "cancel"]


def bearer_token(config: Config, audience: str) -> str:
    for name in ("POLLER_TOKEN", "STATUS_TOKEN"):
        token = config.get(name)
        if token:
            return token
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import id_token

    try:
        return id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    except google.auth.exceptions.GoogleAuthError as exc:
        raise Refused(
            f"cannot mint an ID token for {audience} ({first_line(exc, 200)}): use service-account or "
            "impersonated ADC (`gcloud auth application-default login --impersonate-service-account=OPERATOR_SA`), "
            "or set STATUS_TOKEN to an ID token of the operator service account"
        ) from None


def cancel(config: Config, job_id: str, *, transport: httpx.BaseTransport | None = None) -> CancelResult:
    base = config.require("STATUS_URL", "the status function's URL").rstrip("/")
    token = bearer_token(config, base)
    url = f"{base}/jobs/{quote(job_id, safe='')}:cancel"
    try:
        with httpx.Client(timeout=60, transport=transport) as client:
            response = client.post(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach the status function at {base}: {exc or type(exc).__name__}") from None
    body = _json(response)
    if response.status_code == 404:
        raise JobNotFound(body.get("error") or f"no job {job_id}")
    if response.status_code in (401, 403):
        raise Refused(f"the status function refused the credentials ({response.status_code}: "
                      f"{body.get('error', response.reason_phrase)})")
    if response.status_code not in (200, 202):
        raise CliError(f"the status function answered {response.status_code}: {body.get('error', response.text[:200])}")
    return CancelResult(body.get("job_id", job_id), body.get("state", "?"), bool(body.get("cancelled")),
                        body.get("message", ""))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
