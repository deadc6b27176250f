# Topics: pipeline.tf, local.topics (stage, poll, complete: internal hand-overs; events: public, one
# completion event per job, docs/completion-event.schema.json).
#
# Retry and dead-letter design
#   Every event function (pipeline.tf: a trigger) is Eventarc-triggered with RETRY_POLICY_RETRY: a raised
#   error (TransientError or unexpected) is redelivered with exponential backoff; poison events are
#   acknowledged by the code. Eventarc creates and owns the push subscriptions behind those triggers, so
#   Terraform cannot declare their dead-letter policy; infra/deploy.sh sets it right after apply, as Google's
#   "Retry events" guide prescribes (update the trigger's subscription): dead-letter topic, the function's
#   max_delivery_attempts, 10-600 s backoff, a 600 s ack deadline (no parallel redelivery while a 540 s
#   invocation runs) and 7 days of retention. Terraform owns everything else: the dead-letter topics, a
#   subscription on each that holds what arrives (a topic without a subscription drops messages), the
#   Pub/Sub service agent's publisher role on each dead-letter topic, and the alert (monitoring.tf).
#   `embedpipe dead-letters list|replay` reads and replays the held messages.
#   Beyond Pub/Sub, the pipeline heals itself: the poller re-publishes a COMPLETING job that went quiet,
#   resumes a stale SUBMITTING one, and its reconciler gives an input object without a job one.

resource "google_pubsub_topic" "pipeline" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; internal messages carry job ids and batch names, events job metadata and gs:// paths, never the texts or the embeddings. CMEK would add a KMS key to run and pay for without protecting anything sensitive; use it only if consumers' policy demands it.
  for_each = local.topics

  name                       = "${local.prefix}-${each.key}"
  message_retention_duration = each.value.retention # replay with a seek if ever needed

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; dead letters are copies of the messages above (job ids, storage events, completion events).
  for_each = local.dead_letters

  name = "${local.prefix}-${replace(each.key, "_", "-")}-dlq"

  depends_on = [google_project_service.enabled]
}

# Holds each dead-letter topic's messages for a week, for inspection or replay.
resource "google_pubsub_subscription" "dead_letter_hold" {
  for_each = local.dead_letters

  name                       = "${local.prefix}-${replace(each.key, "_", "-")}-dlq-hold"
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
# the event functions, infra/deploy.sh grants that on the subscription itself; here for the example one.
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
  topic                      = google_pubsub_topic.pipeline["events"].id
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

# -- topic-level publisher roles (never project-wide): pipeline.tf, `publishes` of each function ----------

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = local.topic_publishers

  topic  = google_pubsub_topic.pipeline[each.value.topic].name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
}

# -- operators: read and replay dead letters (`embedpipe dead-letters`) --------------------------------------
# Pull and acknowledge on the hold subscriptions, read a subscription's topic, publish the replayed message
# back to the pipeline topic it came from. (Eventarc's own topic behind the Cloud Storage trigger and the
# Eventarc subscriptions are not known to Terraform: infra/deploy.sh grants those two after apply.)

resource "google_pubsub_subscription_iam_member" "operators_dead_letters" {
  for_each = var.operators_group == "" ? {} : {
    for pair in setproduct(keys(local.dead_letters), ["roles/pubsub.subscriber", "roles/pubsub.viewer"]) :
    "${pair[0]}_${pair[1]}" => { dead_letter = pair[0], role = pair[1] }
  }

  subscription = google_pubsub_subscription.dead_letter_hold[each.value.dead_letter].name
  role         = each.value.role
  member       = var.operators_group
}

resource "google_pubsub_topic_iam_member" "operators_replay" {
  for_each = var.operators_group == "" ? toset([]) : toset(keys(local.topics))

  topic  = google_pubsub_topic.pipeline[each.key].name
  role   = "roles/pubsub.publisher"
  member = var.operators_group
}
