"""submit: Cloud Storage object finalized (Eventarc) -> one tracked job, staged into shards.
stage: a message on the stage topic -> the rest of a job's staging (or an upload whose event was lost)."""

import functions_framework
from cloudevents.http import CloudEvent

from shared.bootstrap import context
from shared.entrypoints import handle_event, pubsub_payload, stage_request, storage_object
from shared.services.submit import resume_submission, submit_object


@functions_framework.cloud_event
def submit(event: CloudEvent) -> None:
    def work():
        source = storage_object(event.get_data())  # a poison event is dropped before any client is built
        return submit_object(context().for_invocation(), source)

    handle_event(event.get("id"), event.get("traceparent"), work)


@functions_framework.cloud_event
def stage(event: CloudEvent) -> None:
    def work():
        job_id, source = stage_request(pubsub_payload(event.get_data()))
        ctx = context().for_invocation()
        return submit_object(ctx, source) if source is not None else resume_submission(ctx, job_id)

    handle_event(event.get("id"), event.get("traceparent"), work)
