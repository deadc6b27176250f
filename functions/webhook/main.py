"""webhook: the Gemini API's batch webhooks (HTTP, Standard Webhooks signature) -> the batch's shard polled
at once. Public (the API calls it without a Google identity): it verifies each delivery's signature and age
and only names a batch to the poll workers, which ask the API for the batch itself. The scheduled poller
stays the fallback for a delivery that never comes."""

import time

import flask
import functions_framework

from shared.bootstrap import context_for_webhook, setup_logging
from shared.config import get_settings
from shared.logging import get_logger
from shared.services import messages
from shared.webhooks import WebhookRejected, batch_of, verify

log = get_logger(__name__)


@functions_framework.http
def webhook(request: flask.Request):
    setup_logging()
    if request.method != "POST":
        return {"error": "use POST"}, 405
    secret = get_settings().webhook_signing_secret.get_secret_value()
    try:
        payload = verify(secret, {k.lower(): v for k, v in request.headers.items()}, request.get_data(), time.time())
    except WebhookRejected as exc:
        log.warning(f"webhook refused: {exc.reason}")
        return {"error": exc.reason}, exc.status
    batch = batch_of(payload)
    if batch is None:
        return {"ignored": str(payload.get("type"))[:100]}, 200
    messages.poll_batches(context_for_webhook(), [batch])
    log.info("batch webhook", batch=batch, event=payload.get("type"))
    return {"accepted": batch}, 200
