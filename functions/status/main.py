"""status: the jobs API (list, one job, cancel), authenticated like the poller."""

import flask
import functions_framework

from shared.auth import AuthError, authorize
from shared.bootstrap import context, setup_logging
from shared.config import get_settings
from shared.domain.jobs import JobState
from shared.errors import NotFound
from shared.services.cancel import cancel_job
from shared.views import job_view


@functions_framework.http
def status(request: flask.Request):
    setup_logging()
    try:
        authorize(request.headers.get("Authorization"), get_settings())
    except AuthError as exc:
        return {"error": exc.message}, exc.status
    path = request.path.rstrip("/")
    ctx = context()
    if path in ("", "/jobs") and request.method == "GET":
        state = request.args.get("state")
        if state and state.upper() not in JobState.__members__:
            return {"error": f"unknown state {state!r}; states: {', '.join(JobState)}"}, 400
        try:
            limit = min(max(int(request.args.get("limit", 50)), 1), 500)
        except ValueError:
            return {"error": "limit must be an integer"}, 400
        jobs, next_token = ctx.jobs.list(
            state=JobState(state.upper()) if state else None, limit=limit, after=request.args.get("after"),
        )
        return {"jobs": [job_view(j) for j in jobs], "next": next_token}, 200
    if path.startswith("/jobs/"):
        job_id, _, verb = path[len("/jobs/"):].partition(":")
        if verb == "cancel" and request.method == "POST":
            try:
                result = cancel_job(ctx.for_invocation(), job_id)
            except NotFound:
                return {"error": f"no job {job_id}"}, 404
            return {"job_id": result.job_id, "state": result.state, "cancelled": result.cancelled,
                    "message": result.message}, 202 if not result.cancelled else 200
        if not verb and request.method == "GET":
            job = ctx.jobs.get(job_id)
            if job is None:
                return {"error": f"no job {job_id}"}, 404
            return job_view(job), 200
    return {"error": "not found"}, 404
