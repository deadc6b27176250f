# Topics
#   complete  internal: the poller hands a finished batch job to `complete` (the function's trigger).
#   events    public: one completion event per job (docs/completion-event.schema.json) for consumers.
#
# Retry and dead-letter design
#   submit and complete are Eventarc-triggered with RETRY_POLICY_RETRY: a raised error (TransientError or
#   unexpected) is redelivered with exponential backoff; poison events are acknowledged by the code.
#   Eventarc creates and owns the push subscriptions behind those triggers, so Terraform cannot declare
#   their dead-letter policy; infra/deploy.sh sets it right after apply, as Google's "Retry events" guide
#   prescribes (update the trigger's subscription): dead-letter topic, max delivery attempts, 10-600 s
#   backoff, a 600 s ack deadline (no parallel redelivery while a 540 s invocation runs) and 7 days of
#   retention. Terraform owns everything else: the dead-letter topics, a subscription on each that holds
#   what arrives (a topic without a subscription drops messages), and the Pub/Sub service agent's
#   publisher role on each dead-letter topic.
#   Beyond Pub/Sub, the pipeline heals itself: the poller re-publishes a COMPLETING job that went quiet
#   and resumes a stale SUBMITTING one, so a dead-lettered message is for forensics, not lost work.

locals {
  dead_letters = toset(["submit", "complete", "events"])
}

resource "google_pubsub_topic" "complete" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; the messages carry a job id only (no text, no embeddings). CMEK would add a KMS key to run and pay for without protecting anything sensitive.
  name                       = "${local.prefix}-complete"
  message_retention_duration = "86400s" # replay a day of hand-overs with a seek if ever needed

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; events carry job metadata and gs:// paths, not the texts or the embeddings. Use CMEK only if consumers' policy demands it.
  name                       = "${local.prefix}-events"
  message_retention_duration = "604800s" # a new consumer can seek back a week

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; dead letters are copies of the messages above (job ids, storage events, completion events).
  for_each = local.dead_letters

  name = "${local.prefix}-${each.key}-dlq"

  depends_on = [google_project_service.enabled]
}

# Holds each dead-letter topic's messages for a week, for inspection or replay.
resource "google_pubsub_subscription" "dead_letter_hold" {
  for_each = local.dead_letters

  name                       = "${local.prefix}-${each.key}-dlq-hold"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires, even when nobody pulls
  }
}

# The Pub/Sub service agent forwards undeliverable messages: it must publish to the dead-letter topics...
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letters

  topic  = google_pubsub_topic.dead_letter[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

# ...and subscribe to (acknowledge on) the source subscription. For the Eventarc-owned subscriptions of
# submit and complete, infra/deploy.sh grants that on the subscription itself; here for the example one.
resource "google_pubsub_subscription_iam_member" "example_events_dead_letter" {
  count = var.create_example_events_subscription ? 1 : 0

  subscription = google_pubsub_subscription.example_events[0].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# An example consumer of the public events: pull, at-least-once (dedupe on the event's event_id), backoff
# 10-600 s, dead letter after N attempts. Consumers usually create their own, with a filter such as
# attributes.status = "FAILED".
resource "google_pubsub_subscription" "example_events" {
  count = var.create_example_events_subscription ? 1 : 0

  name                       = "${local.prefix}-events-example"
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter["events"].id
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]
}

# -- topic-level publisher roles (never project-wide) ------------------------------------------------------

locals {
  topic_publishers = {
    poller_complete = { topic = google_pubsub_topic.complete.name, sa = "poller" } # hands jobs to `complete`
    submit_events   = { topic = google_pubsub_topic.events.name, sa = "submit" }   # FAILED events
    poller_events   = { topic = google_pubsub_topic.events.name, sa = "poller" }   # expired/failed jobs
    complete_events = { topic = google_pubsub_topic.events.name, sa = "complete" } # the completion event
    status_events   = { topic = google_pubsub_topic.events.name, sa = "status" }   # CANCELLED events
  }
}

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = local.topic_publishers

  topic  = each.value.topic
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
}
