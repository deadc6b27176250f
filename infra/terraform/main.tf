# The embeddings pipeline on Google Cloud. Files are split by concern:
#   main.tf       names, project data, APIs
#   storage.tf    input, output and source buckets (+ bucket-level IAM)
#   firestore.tf  the (default) database and the jobs index
#   pubsub.tf     complete/events topics, dead-letter topics, subscriptions (+ topic-level IAM)
#   secrets.tf    the Gemini API key's secret (container only)
#   iam.tf        one service account per function and per caller, project-level roles, service agents
#   functions.tf  the four Cloud Functions (2nd gen) and who may invoke them
#   scheduler.tf  the poller's tick

data "google_project" "this" {
  project_id = var.project_id
}

# The Cloud Storage service agent publishes the bucket's notifications for Eventarc.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}

locals {
  prefix         = var.name_prefix
  project_number = data.google_project.this.number

  input_bucket  = coalesce(var.input_bucket_name, "${var.project_id}-${local.prefix}-input")
  output_bucket = coalesce(var.output_bucket_name, "${var.project_id}-${local.prefix}-output")
  source_bucket = coalesce(var.source_bucket_name, "${var.project_id}-${local.prefix}-sources")

  function_names = toset(["submit", "complete", "poller", "status"])
  # Cloud Run service name = function name.
  service_names = { for name in local.function_names : name => "${local.prefix}-${name}" }

  # The poller's audience is its own URL, but a function cannot reference its own `service_config.uri`
  # (a cycle). Cloud Run gives every service a deterministic URL, https://SERVICE-PROJECT_NUMBER.REGION.run.app,
  # known before the service exists: POLLER_AUDIENCE, the scheduler's target and its OIDC audience are all
  # derived from it here, so they agree by construction. (A precondition in functions.tf checks the
  # 63-character limit above which Cloud Run assigns no deterministic URL.)
  urls = { for name, service in local.service_names : name => "https://${service}-${local.project_number}.${var.region}.run.app" }

  pubsub_agent = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  gcs_agent    = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"

  source_dir = abspath(startswith(var.functions_source_dir, "/") ? var.functions_source_dir : "${path.module}/${var.functions_source_dir}")
}

# -- APIs ----------------------------------------------------------------------------------------------
# deploy.sh enables serviceusage, cloudresourcemanager, iam and storage with gcloud first: Terraform needs
# them to read the project and to enable the rest. Nothing is disabled on destroy (other workloads may use them).

resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
