"""submit: Cloud Storage object finalized (Eventarc) -> one tracked job and its batches."""

import functions_framework
from cloudevents.http import CloudEvent

from shared.bootstrap import context
from shared.entrypoints import handle_event, storage_object
from shared.services.submit import submit_object


@functions_framework.cloud_event
def submit(event: CloudEvent) -> None:
    def work():
        source = storage_object(event.get_data())  # a poison event is dropped before any client is built
        return submit_object(context().for_invocation(), source)

    handle_event(event.get("id"), event.get("traceparent"), work)
