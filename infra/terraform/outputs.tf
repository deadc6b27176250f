output "input_bucket" {
  description = "Upload files to embed under gs://<input_bucket>/<input_prefix>."
  value       = google_storage_bucket.input.name
}

output "input_prefix" {
  description = "Only objects under this prefix become jobs."
  value       = var.input_prefix
}

output "output_bucket" {
  description = "Embeddings, manifests and error reports land here, under <output_prefix>."
  value       = google_storage_bucket.output.name
}

output "output_prefix" {
  description = "Prefix of the pipeline's outputs."
  value       = var.output_prefix
}

output "source_bucket" {
  description = "Holds the functions' source zips."
  value       = google_storage_bucket.sources.name
}

output "jobs_collection" {
  description = "Firestore collection of the jobs (the smoke test reads its job there)."
  value       = var.jobs_collection
}

output "topics" {
  description = "Pipeline topics by key (stage, poll, complete: internal; events: public)."
  value       = { for key, topic in google_pubsub_topic.pipeline : key => topic.name }
}

output "events_topic" {
  description = "Public topic of completion events (subscribe here)."
  value       = google_pubsub_topic.pipeline["events"].name
}

output "events_topic_id" {
  description = "Full resource name of the events topic."
  value       = google_pubsub_topic.pipeline["events"].id
}

output "dead_letter_topics" {
  description = "Dead-letter topic per delivery path (the event functions' ones are attached to their Eventarc subscriptions by infra/deploy.sh)."
  value       = { for key, topic in google_pubsub_topic.dead_letter : key => topic.id }
}

output "dead_letter_hold_subscriptions" {
  description = "Where dead letters are held: `embedpipe dead-letters list|replay` reads these (DEAD_LETTER_SUBSCRIPTIONS)."
  value       = { for key, sub in google_pubsub_subscription.dead_letter_hold : key => sub.name }
}

output "dead_letter_subscriptions_setting" {
  description = "DEAD_LETTER_SUBSCRIPTIONS for the CLI: the hold subscriptions, comma-separated."
  value       = join(",", [for sub in google_pubsub_subscription.dead_letter_hold : sub.name])
}

# For infra/deploy.sh (plain strings, read with `terraform output -raw`, no JSON tooling needed): one
# "function:dead_letter_topic_id:max_delivery_attempts" word per event function.
output "dead_letter_routes" {
  description = "Per event function: its name, its dead-letter topic and its delivery attempts, as function:topic:attempts words."
  value = join(" ", [
    for name, attempts in local.dead_letters :
    "${google_cloudfunctions2_function.fn[name].name}:${google_pubsub_topic.dead_letter[name].id}:${attempts}" if name != "events"
  ])
}

output "example_events_subscription" {
  description = "The example consumer subscription on the events topic (null when not created)."
  value       = var.create_example_events_subscription ? google_pubsub_subscription.example_events[0].name : null
}

output "function_names" {
  description = "Cloud Functions (= Cloud Run services) by role."
  value       = { for key, fn in google_cloudfunctions2_function.fn : key => fn.name }
}

output "function_urls" {
  description = "Deterministic Cloud Run URL of each function (https://SERVICE-PROJECT_NUMBER.REGION.run.app)."
  value       = local.urls
}

output "poller_url" {
  description = "The poller's URL: its POLLER_AUDIENCE and the scheduler's target (deterministic Cloud Run URL)."
  value       = local.urls["poller"]
}

output "status_url" {
  description = "The jobs API: GET /jobs, GET /jobs/<id>, POST /jobs/<id>:cancel (deterministic Cloud Run URL, also its token audience; STATUS_URL for the CLI)."
  value       = local.urls["status"]
}

output "webhook_url" {
  description = "The URL to register as the Gemini API's static webhook (known before the function exists; deployed with enable_webhook = true)."
  value       = "https://${local.prefix}-webhook-${local.project_number}.${var.region}.run.app"
}

output "function_uris" {
  description = "The URIs Cloud Functions reports for each function (the hash-based run.app URL); the deterministic ones above reach the same services."
  value       = { for key, fn in google_cloudfunctions2_function.fn : key => fn.service_config[0].uri }
}

output "service_accounts" {
  description = "Service account emails by purpose."
  value       = { for key, sa in google_service_account.sa : key => sa.email }
}

output "operator_service_account" {
  description = "The account operators impersonate to call the status API."
  value       = google_service_account.sa["operator"].email
}

output "operators_group" {
  description = "Who may impersonate the operator account and replay dead letters (empty: nobody)."
  value       = var.operators_group
}

output "pubsub_service_agent" {
  description = "The Pub/Sub service agent (infra/deploy.sh lets it acknowledge on the Eventarc subscriptions for dead-lettering)."
  value       = trimprefix(local.pubsub_agent, "serviceAccount:")
}

output "gemini_secret_id" {
  description = "Add the API key as a version of this secret (never through Terraform)."
  value       = google_secret_manager_secret.secret["gemini"].secret_id
}

output "webhook_secret_id" {
  description = "Add the webhook's signing secret as a version of this secret (never through Terraform)."
  value       = google_secret_manager_secret.secret["webhook"].secret_id
}

output "webhook_enabled" {
  description = "Whether the webhook function is deployed (\"true\"/\"false\", for infra/deploy.sh)."
  value       = tostring(var.enable_webhook)
}

output "scheduler_job" {
  description = "The poller's tick (`gcloud scheduler jobs run <name> --location <region>` for an extra one)."
  value       = google_cloud_scheduler_job.poller_tick.name
}

output "region" {
  description = "Region of the deployment."
  value       = var.region
}

output "project_id" {
  description = "Project of the deployment."
  value       = var.project_id
}

# Scalars for infra/deploy.sh.
output "poller_function" {
  description = "Name of the poller function."
  value       = google_cloudfunctions2_function.fn["poller"].name
}

output "status_function" {
  description = "Name of the status function."
  value       = google_cloudfunctions2_function.fn["status"].name
}

output "webhook_function" {
  description = "Name of the webhook function (empty while enable_webhook is false)."
  value       = try(google_cloudfunctions2_function.fn["webhook"].name, "")
}
