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

output "complete_topic" {
  description = "Internal topic: poller -> complete."
  value       = google_pubsub_topic.complete.name
}

output "events_topic" {
  description = "Public topic of completion events (subscribe here)."
  value       = google_pubsub_topic.events.name
}

output "events_topic_id" {
  description = "Full resource name of the events topic."
  value       = google_pubsub_topic.events.id
}

output "dead_letter_topics" {
  description = "Dead-letter topic per delivery path (submit and complete: attached to the Eventarc subscriptions by infra/deploy.sh)."
  value       = { for key, topic in google_pubsub_topic.dead_letter : key => topic.id }
}

output "dead_letter_hold_subscriptions" {
  description = "Pull these to inspect dead letters."
  value       = { for key, sub in google_pubsub_subscription.dead_letter_hold : key => sub.name }
}

output "example_events_subscription" {
  description = "The example consumer subscription on the events topic (null when not created)."
  value       = var.create_example_events_subscription ? google_pubsub_subscription.example_events[0].name : null
}

output "function_names" {
  description = "Cloud Functions (= Cloud Run services) by role."
  value       = { for key, fn in google_cloudfunctions2_function.fn : key => fn.name }
}

output "poller_url" {
  description = "The poller's URL: its POLLER_AUDIENCE and the scheduler's target (deterministic Cloud Run URL)."
  value       = local.urls["poller"]
}

output "status_url" {
  description = "The jobs API: GET /jobs, GET /jobs/<id>, POST /jobs/<id>:cancel (deterministic Cloud Run URL, also its token audience)."
  value       = local.urls["status"]
}

output "function_uris" {
  description = "The URIs Cloud Functions reports for each function (the hash-based run.app URL); the deterministic ones above reach the same services."
  value       = { for key, fn in google_cloudfunctions2_function.fn : key => fn.service_config[0].uri }
}

output "service_accounts" {
  description = "Service account emails by purpose."
  value       = { for key, sa in google_service_account.sa : key => sa.email }
}

output "pubsub_service_agent" {
  description = "The Pub/Sub service agent (infra/deploy.sh lets it acknowledge on the Eventarc subscriptions for dead-lettering)."
  value       = trimprefix(local.pubsub_agent, "serviceAccount:")
}

output "gemini_secret_id" {
  description = "Add the API key as a version of this secret (never through Terraform)."
  value       = google_secret_manager_secret.gemini_api_key.secret_id
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

output "dead_letter_max_delivery_attempts" {
  description = "Delivery attempts before a message is dead-lettered (infra/deploy.sh applies it to the Eventarc subscriptions)."
  value       = var.dead_letter_max_delivery_attempts
}

# Scalars for infra/deploy.sh (read with `terraform output -raw`, no JSON tooling needed).
output "submit_function" {
  description = "Name of the submit function."
  value       = google_cloudfunctions2_function.fn["submit"].name
}

output "complete_function" {
  description = "Name of the complete function."
  value       = google_cloudfunctions2_function.fn["complete"].name
}

output "poller_function" {
  description = "Name of the poller function."
  value       = google_cloudfunctions2_function.fn["poller"].name
}

output "status_function" {
  description = "Name of the status function."
  value       = google_cloudfunctions2_function.fn["status"].name
}

output "submit_dead_letter_topic" {
  description = "Dead-letter topic of the submit trigger's subscription."
  value       = google_pubsub_topic.dead_letter["submit"].id
}

output "complete_dead_letter_topic" {
  description = "Dead-letter topic of the complete trigger's subscription."
  value       = google_pubsub_topic.dead_letter["complete"].id
}
