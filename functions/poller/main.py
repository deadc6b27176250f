"""poller: Cloud Scheduler's tick (HTTP, OIDC) -> due work fanned out, waiting work admitted; a summary.
poll_worker: a message on the poll topic -> each due shard or job in it moved one step."""

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared.auth import AuthError, authorize
from shared.bootstrap import context, setup_logging
from shared.config import get_settings
from shared.entrypoints import handle_event, pubsub_payload
from shared.logging import bind, trace_from_header
from shared.services.poll import poll_work, tick


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
        return tick(context().for_invocation()).to_dict(), 200


@functions_framework.cloud_event
def poll_worker(event: CloudEvent) -> None:
    def work():
        payload = pubsub_payload(event.get_data())  # a poison event is dropped before any client is built
        return poll_work(context().for_invocation(), payload)

    handle_event(event.get("id"), event.get("traceparent"), work)
