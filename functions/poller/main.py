"""poller: Cloud Scheduler's tick (HTTP, OIDC) -> every due job moved one step; a JSON summary back."""

import flask
import functions_framework

from shared.auth import AuthError, authorize
from shared.bootstrap import context, setup_logging
from shared.config import get_settings
from shared.logging import bind, trace_from_header
from shared.services.poll import poll_due_jobs


@functions_framework.http
def poller(request: flask.Request):
    setup_logging()
    try:
        authorize(request.headers.get("Authorization"), get_settings())
    except AuthError as exc:
        return {"error": exc.message}, exc.status
    if request.method != "POST":
        return {"error": "use POST"}, 405
    with bind(trace=trace_from_header(request.headers.get("X-Cloud-Trace-Context"))):
        return poll_due_jobs(context()).to_dict(), 200
