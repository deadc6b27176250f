# An alert when a dead-letter subscription holds messages: a message there was delivered
# max_delivery_attempts times without success (pubsub.tf). Replay with `embedpipe dead-letters replay`
# once the cause is fixed; the reconciler (in the poller's tick) meanwhile gives every input object a job.
#
# num_undelivered_messages is sampled about once a minute; the maximum over 5 minutes above 0 opens an
# incident, which closes by itself a day after the subscriptions are empty again.

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "${local.prefix}: messages in a dead-letter subscription"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "A dead-letter hold subscription is not empty"

    condition_threshold {
      filter = join(" AND ", [
        "resource.type = \"pubsub_subscription\"",
        "metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\"",
        "resource.labels.subscription_id = one_of(${join(", ", [for sub in google_pubsub_subscription.dead_letter_hold : "\"${sub.name}\""])})",
      ])
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Messages of the embeddings pipeline were dead-lettered after their delivery attempts ran out.
      1. Look at them: `embedpipe dead-letters list` (the subscription names the function).
      2. Find the cause in the function's logs (Cloud Run service ${local.prefix}-FUNCTION).
      3. Once fixed, replay them: `embedpipe dead-letters replay` (back to the topic they came from).
      Input objects without a job are also picked up by the poller's reconciler.
    EOT
  }

  depends_on = [google_project_service.enabled]
}
