"""complete: a job handed over by the poller (Pub/Sub) -> normalised embeddings, manifest, one event."""

import functions_framework
from cloudevents.http import CloudEvent

from shared.bootstrap import context
from shared.entrypoints import PoisonEvent, handle_event, pubsub_payload
from shared.services.complete import complete_job


def _job_id(event: CloudEvent) -> str:
    job_id = pubsub_payload(event.get_data()).get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise PoisonEvent("complete message has no job_id")
    return job_id


@functions_framework.cloud_event
def complete(event: CloudEvent) -> None:
    def work():
        job_id = _job_id(event)  # a poison event is dropped before any client is built
        return complete_job(context().for_invocation(), job_id)

    handle_event(event.get("id"), event.get("traceparent"), work)
