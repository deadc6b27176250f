"""complete: a message on the complete topic -> one shard's results written, or a finished job's files
and its one event."""

import functions_framework
from cloudevents.http import CloudEvent

from shared.bootstrap import context
from shared.entrypoints import complete_request, handle_event, pubsub_payload
from shared.services.complete import complete_message


@functions_framework.cloud_event
def complete(event: CloudEvent) -> None:
    def work():
        job_id, shard = complete_request(pubsub_payload(event.get_data()))  # poison: dropped before any client
        return complete_message(context().for_invocation(), job_id, shard)

    handle_event(event.get("id"), event.get("traceparent"), work)
