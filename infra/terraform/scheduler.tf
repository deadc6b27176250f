# The poller's tick: Cloud Scheduler POSTs to the poller every minute with a Google-signed OIDC token of
# the scheduler service account, audience = the poller's URL (the same deterministic URL the poller was
# told to expect in POLLER_AUDIENCE, main.tf: local.urls).
#
# Retries: a failed tick is retried twice with a short backoff, bounded well inside the minute; the next
# tick comes anyway. Overlapping ticks are harmless: jobs are leased (shared/services/leasing.py).

resource "google_cloud_scheduler_job" "poller_tick" {
  name             = "${local.prefix}-poller-tick"
  description      = "Moves every due embedding job one step"
  region           = var.region
  schedule         = var.poll_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "${local.sizing["poller"].timeout_seconds}s" # 15 s - 30 min for HTTP targets

  retry_config {
    retry_count          = 2
    min_backoff_duration = "5s"
    max_backoff_duration = "20s"
    max_doublings        = 2
    max_retry_duration   = "50s"
  }

  http_target {
    http_method = "POST"
    uri         = local.urls["poller"]
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.sa["scheduler"].email
      audience              = local.urls["poller"]
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invokers]
}
